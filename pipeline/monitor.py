"""``jobs/status.py`` and ``jobs/cancel.py``: a run's jobs and progress, from its folder and its backend.

Progress comes from the shard files (the unit of truth); each job's state, and its cancel, from the backend
that submitted it (``Launcher.job_states``, ``Launcher.cancel_jobs``: SLURM's records, or the local
processes and their progress files).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.config import project_path
from pipeline.launch import backend, read_submissions, submissions
from pipeline.progress import BAR, bar, count, describe_phase, format_duration, read_progress, step_work
from pipeline.runs import Run
from pipeline.shards import ShardCorruptError
from pipeline.stages import CHAIN, STAGES, saved_config
from pipeline.jobs import REDUCE_LABEL


def run_status(run: Run) -> dict[str, Any]:
    """Per array task of every step: job id, scheduler state, work done / planned; and the overall state."""
    config = saved_config(run)
    steps = CHAIN if config.stage == "all" else ((config.stage, config.stage),)
    subs, warnings = read_submissions(run)
    latest: dict[tuple[str, str], str] = {}
    reducers: dict[str, str] = {}
    for sub in subs:
        latest.update({(sub["stage"], label): job for label, job in sub["shards"].items()})
        reducers[sub["stage"]] = sub["reduce"]
    cluster = subs[-1]["cluster"] if subs else config.cluster.kind
    units = {where: STAGES[name].units(saved_config(run, where)) for where, name in steps}
    shots = {(where, unit.label): read_progress(run.progress_path(where, unit.label)) for where in units for unit in units[where]}
    shots.update({(where, REDUCE_LABEL): read_progress(run.progress_path(where, REDUCE_LABEL)) for where in reducers})
    jobs = {**latest, **{(where, REDUCE_LABEL): job for where, job in reducers.items()}}
    states = backend(cluster).job_states(run, subs, jobs, shots)
    rows, tables, totals = [], [], []
    for where, name in steps:
        stage = STAGES[name]
        tables.append(run.root / stage.table_file(where))
        work: list[tuple[int, int]] = []
        for unit in units[where]:
            state = states.get((where, unit.label), "-")
            try:
                done, total = stage.progress(run.stage_dir(where), unit)
            except ShardCorruptError as err:  # the shard is named, the rest of the run still shown
                warnings.append(str(err))
                (done, total), state = (0, len(unit.indices)), "DAMAGED"
            shot = shots.get((where, unit.label))
            label = unit.label if len(steps) == 1 else f"{where}/{unit.label}"
            rows.append({"label": label, "part": unit.part, "shard": unit.shard, "job": latest.get((where, unit.label)),
                         "state": state, "done": done, "total": total, "what": stage.what,
                         "phase": describe_phase(shot.get("phase")) if shot and state in ("RUNNING", "PENDING") else "",
                         "note": _note(state, shot),
                         "updated": shot.get("updated") if shot else None})
            work.append((done, total))
        step_done, step_total, known = step_work(work)
        totals.append({"where": where, "what": stage.what, "done": step_done, "total": step_total if known else None})
    done = sum(t["done"] for t in totals)
    complete = all(t["total"] and t["done"] == t["total"] for t in totals)
    active = any(s in ("RUNNING", "PENDING", "CONFIGURING", "REQUEUED") for s in states.values())
    final = run.root / "README.md" if config.stage == "all" else tables[-1]
    overall = "complete" if complete and final.exists() else ("running" if active else "incomplete")
    reduce_where = "summary" if "summary" in reducers else steps[-1][0]
    return {
        "run_id": run.run_id,
        "stage": config.stage,
        "cluster": cluster,
        "steps": totals,
        "shards": rows,
        "reduce": {"job": reducers.get(reduce_where), "state": states.get((reduce_where, REDUCE_LABEL), "-")},
        "done": done,
        "state": overall,
        "warnings": warnings,
    }


def _note(state: str, shot: dict[str, Any] | None) -> str:
    """What a live or failed task last said beside its phase: what it waits for, that it loads its models,
    why it failed. A job the scheduler runs whose process has not written yet is starting (imports)."""
    if shot is None or state not in ("RUNNING", "PENDING", "FAILED"):
        return ""
    if state == "RUNNING" and shot["state"] == "pending":
        return "starting"
    return shot.get("note", "")


def progress_summary(status: dict[str, Any]) -> str:
    """``12/20 problems``; for a chain, every step's: ``eval 40/40 samples · train 2/4 steps · ...``."""
    steps = status["steps"]
    if len(steps) == 1:
        return count(steps[0]["done"], steps[0]["total"], steps[0]["what"])
    return " · ".join(f"{s['where']} {count(s['done'], s['total'], s['what'])}" for s in steps)


def format_status(status: dict[str, Any], now: float | None = None) -> str:
    """The status screen: the run's line, then one line per task (job, scheduler state, work done, what it
    is doing now and when it last said so), then the reducer."""
    now = time.time() if now is None else now
    width = max([6, *(len(r["label"]) for r in status["shards"])])
    done_width = max([8, *(len(count(r["done"], r["total"], r["what"])) for r in status["shards"])])
    lines = [
        f"run {status['run_id']} ({status['stage']}, {status['cluster']}): {status['state']}, {progress_summary(status)}",
        f"{'task':<{width}}  {'job':<14} {'state':<10} {'done':<{done_width}} {'':<{BAR}} now",
    ]
    for r in status["shards"]:
        work = count(r["done"], r["total"], r["what"])
        now_doing = r["phase"] or r["note"]
        if now_doing and r["updated"]:
            now_doing += f" ({format_duration(now - r['updated'])} ago)"
        lines.append(f"{r['label']:<{width}}  {str(r['job'] or '-'):<14} {r['state']:<10} {work:<{done_width}} {bar(r['done'], r['total'], ' ')} {now_doing}".rstrip())
    lines.append(f"{'reduce':<{width}}  {str(status['reduce']['job'] or '-'):<14} {status['reduce']['state']}")
    lines += [f"warning: {w}" for w in status["warnings"]]
    return "\n".join(lines)


def list_runs(results_dir: Path) -> list[Run]:
    return sorted((Run(p.parent) for p in results_dir.glob("*/config.yaml")), key=lambda r: r.run_id)


def cancel_run(run: Run) -> list[str]:
    """Cancels every job of the run that may still be queued or running, through the backend that submitted
    them; returns their ids."""
    subs = submissions(run)
    return backend(subs[-1]["cluster"]).cancel_jobs(run, subs) if subs else []


def resolve_run(results_dir: str, run_id: str) -> Run:
    run = Run(project_path(results_dir) / run_id)
    if not run.config_path.exists():
        raise FileNotFoundError(f"no run '{run_id}' under {project_path(results_dir)}")
    return run

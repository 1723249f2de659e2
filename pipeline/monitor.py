"""``jobs/status.py`` and ``jobs/cancel.py``: a run's jobs and progress, from its folder and the scheduler.

Progress comes from the shard files (the unit of truth), job states from SLURM (``squeue``, then
``sacct`` for finished jobs) or, for local runs, from the task processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from pipeline.config import project_path
from pipeline.launch import read_submissions, submissions
from pipeline.launch.local import Dependency, process_alive
from pipeline.progress import BAR, bar, count, describe_phase, format_duration, read_progress
from pipeline.runs import Run
from pipeline.shards import ShardCorruptError
from pipeline.stages import CHAIN, STAGES, saved_config
from pipeline.jobs import CANCELLED, REDUCE_LABEL


def _slurm_states(job_ids: list[str]) -> dict[str, str]:
    """State per job id: squeue for queued/running jobs, sacct (when accounting runs) for the rest."""
    states: dict[str, str] = {}
    if not job_ids or shutil.which("squeue") is None:
        return states
    arrays = sorted({j.split("_")[0] for j in job_ids})
    out = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i|%T"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        job, _, state = line.partition("|")
        states[job] = state
    if shutil.which("sacct"):
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(arrays), "-o", "JobID,State"], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            job, _, state = line.partition("|")
            states.setdefault(job, state.split()[0] if state else "UNKNOWN")
    return states


def _local_state(launch: Path, job_id: str, started: dict[str, int | None], shot: dict[str, Any] | None) -> str:
    """A local job (a pid) runs until its work is over (``Dependency.finished``: its results written, or its
    process gone): PENDING while its progress file says it waits (for a slot of
    ``cluster.array_parallelism``, or for an earlier job), as SLURM shows a job held by its array's throttle
    or a dependency; RUNNING once its work has begun. An ended one is COMPLETED, FAILED or CANCELLED as its
    progress file says (sacct's words), else ENDED."""
    if job_id.isdigit() and not Dependency.recorded(launch, job_id, started.get(job_id)).finished():
        return "PENDING" if shot is not None and shot["state"] == "pending" else "RUNNING"
    if shot is not None and shot["state"] == "done":
        return "COMPLETED"
    if shot is not None and shot["state"] == "failed":
        return "CANCELLED" if shot.get("note", "").startswith(CANCELLED) else "FAILED"
    return "ENDED"


def _started(subs: list[dict[str, Any]]) -> dict[str, int | None]:
    """The recorded start time of every local job of the run (submissions made before they were recorded
    have none: such jobs are never taken for running, nor signalled)."""
    return {job: start for sub in subs for job, start in sub.get("started", {}).items()}


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
    started = _started(subs)
    units = {where: STAGES[name].units(saved_config(run, where)) for where, name in steps}
    shots = {(where, unit.label): read_progress(run.progress_path(where, unit.label)) for where in units for unit in units[where]}
    shots.update({(where, REDUCE_LABEL): read_progress(run.progress_path(where, REDUCE_LABEL)) for where in reducers})
    jobs = {**latest, **{(where, REDUCE_LABEL): job for where, job in reducers.items()}}
    if cluster == "slurm":
        scheduler = _slurm_states(list(jobs.values()))
        states = {key: scheduler.get(job, "-") for key, job in jobs.items()}
    else:
        states = {key: _local_state(run.launch_dir, job, started, shots.get(key)) for key, job in jobs.items()}
    rows, tables, totals = [], [], []
    for where, name in steps:
        stage = STAGES[name]
        tables.append(run.root / stage.table_file(where))
        step_done = step_total = 0
        unknown = False  # a unit whose total is not known yet (a train job before its first step)
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
            step_done, step_total, unknown = step_done + done, step_total + total, unknown or total == 0
        totals.append({"where": where, "what": stage.what, "done": step_done, "total": None if unknown else step_total})
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
    """Cancels every job of the run that may still be queued or running; returns their ids."""
    subs = submissions(run)
    ids = list(dict.fromkeys(j for sub in subs for j in (*sub["shards"].values(), sub["reduce"])))
    if not subs:
        return []
    if subs[-1]["cluster"] == "slurm":
        arrays = sorted({j.split("_")[0] for j in ids})
        subprocess.run(["scancel", *arrays], check=False)
        return arrays
    cancelled = []
    started = _started(subs)
    for job in ids:
        if job.isdigit() and _signal_if_same(int(job), started.get(job)):
            cancelled.append(job)
    return cancelled


def _signal_if_same(pid: int, started: int | None) -> bool:
    """SIGINT (what submitit's LocalJob.cancel sends; its controller bypasses SIGTERM) to the process recorded
    as (pid, start time) and to no other: the pid is pinned with a pidfd first, then its start time checked,
    so a process that took over the pid in between is never signalled."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if not process_alive(pid, started):
            return False
        signal.pidfd_send_signal(fd, signal.SIGINT)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def resolve_run(results_dir: str, run_id: str) -> Run:
    run = Run(project_path(results_dir) / run_id)
    if not run.config_path.exists():
        raise FileNotFoundError(f"no run '{run_id}' under {project_path(results_dir)}")
    return run

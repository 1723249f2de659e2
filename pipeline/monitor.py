"""``jobs/status.py`` and ``jobs/cancel.py``: a run's jobs and progress, from its folder and the scheduler.

Progress comes from the shard files (the unit of truth), job states from SLURM (``squeue``, then
``sacct`` for finished jobs) or, for local runs, from the task processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from pipeline.config import project_path
from pipeline.executors import submissions
from pipeline.runs import Run
from pipeline.stages import CHAIN, STAGES
from pipeline.tasks import process_alive


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


def _local_state(job_id: str, started: dict[str, int | None]) -> str:
    """A local job (a pid) runs while the process of that pid and recorded start time does."""
    return "RUNNING" if job_id.isdigit() and process_alive(int(job_id), started.get(job_id)) else "ENDED"


def _started(subs: list[dict[str, Any]]) -> dict[str, int | None]:
    """The recorded start time of every local job of the run (submissions made before they were recorded
    have none: such jobs are never taken for running, nor signalled)."""
    return {job: start for sub in subs for job, start in sub.get("started", {}).items()}


def run_status(run: Run) -> dict[str, Any]:
    """Per array task of every step: job id, scheduler state, work done / planned; and the overall state."""
    config = run.saved_config_container()
    steps = CHAIN if config["stage"] == "all" else ((config["stage"], config["stage"]),)
    subs = submissions(run)
    latest: dict[tuple[str, str], str] = {}
    reducers: dict[str, str] = {}
    for sub in subs:
        latest.update({(sub["stage"], label): job for label, job in sub["shards"].items()})
        reducers[sub["stage"]] = sub["reduce"]
    cluster = subs[-1]["cluster"] if subs else config["cluster"]["kind"]
    ids = [*latest.values(), *reducers.values()]
    started = _started(subs)
    states = _slurm_states(ids) if cluster == "slurm" else {j: _local_state(j, started) for j in ids}
    rows, tables = [], []
    for where, kind in steps:
        stage = STAGES[kind]
        tables.append(run.root / stage.table_file(where))
        for unit in stage.units(run.stage_config(where)):
            done, total = stage.progress(run.stage_dir(where), unit)
            job = latest.get((where, unit.label))
            label = unit.label if len(steps) == 1 else f"{where}/{unit.label}"
            rows.append({"label": label, "part": unit.part, "shard": unit.shard, "job": job,
                         "state": states.get(job, "-") if job else "-", "done": done, "total": total})
    done, total = sum(r["done"] for r in rows), sum(r["total"] for r in rows)
    active = any(s in ("RUNNING", "PENDING", "CONFIGURING", "REQUEUED") for s in states.values())
    final = run.root / "README.md" if config["stage"] == "all" else tables[-1]
    overall = "complete" if done == total and final.exists() else ("running" if active else "incomplete")
    reduce_job = reducers.get("summary") or reducers.get(steps[-1][0])
    return {
        "run_id": run.run_id,
        "stage": config["stage"],
        "what": STAGES[steps[-1][1]].what if len(steps) == 1 else "units of work",
        "cluster": cluster,
        "shards": rows,
        "reduce": {"job": reduce_job, "state": states.get(reduce_job, "-") if reduce_job else "-"},
        "done": done,
        "total": total,
        "state": overall,
    }


def format_status(status: dict[str, Any]) -> str:
    width = max([5, *(len(r["label"]) for r in status["shards"])])
    lines = [
        f"run {status['run_id']} ({status['stage']}, {status['cluster']}): {status['state']}, "
        f"{status['done']}/{status['total']} {status['what']}",
        f"{'task':<{width}}  {'job':<14} {'state':<12} progress",
    ]
    for r in status["shards"]:
        bar = "#" * int(20 * r["done"] / r["total"]) if r["total"] else ""
        lines.append(f"{r['label']:<{width}}  {str(r['job'] or '-'):<14} {r['state']:<12} {r['done']:>4}/{r['total']:<4} {bar:<20}")
    lines.append(f"{'reduce':<{width}}  {str(status['reduce']['job'] or '-'):<14} {status['reduce']['state']}")
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

"""The SLURM backend: one ``sbatch --array`` per stage, throttled by ``cluster.array_parallelism``; the
reducer, and the next step of a chain, depend on it with ``afterany`` (an ``afterok`` never fires when one
task fails: each step checks its own inputs). A per-GPU stage (train) runs ``--ntasks-per-node``
processes per job. Every ``cluster.*`` key maps to an sbatch option; reducers ask for no GPU. A job's state
is SLURM's (``squeue``, then ``sacct`` for jobs that left the queue); a cancel is ``scancel`` of each array."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any, Iterable, Mapping, Sequence

import submitit
from omegaconf import OmegaConf

from pipeline.launch.base import Key, Launcher, job_ids
from pipeline.runs import Run


class SlurmLauncher(Launcher):
    """cluster=slurm."""

    kind = "slurm"

    def executor(self, name: str, timeout_min: int, processes: int, gpus: int) -> submitit.AutoExecutor:
        c = self.cfg.cluster
        executor = submitit.AutoExecutor(folder=self.run.launch_dir, cluster="slurm", slurm_max_num_timeout=int(c.max_requeues))
        executor.update_parameters(
            name=name,
            timeout_min=timeout_min,
            cpus_per_task=int(c.cpus_per_task),
            nodes=int(c.nodes),
            tasks_per_node=processes,
            gpus_per_node=gpus or None,
            mem_gb=c.mem_gb,
            slurm_partition=c.partition,
            slurm_account=c.account,
            slurm_qos=c.qos,
            slurm_constraint=c.constraint,
            slurm_array_parallelism=int(c.array_parallelism),
            slurm_signal_delay_s=int(c.signal_delay_s),
            slurm_additional_parameters=OmegaConf.to_container(c.additional) or None,
        )
        return executor

    def reduce_limit(self) -> int:
        return int(self.cfg.cluster.reduce_timeout_min)

    def order_after(self, executor: submitit.Executor, after: Sequence[submitit.Job]) -> None:
        """Start after every given job has ended, whatever its outcome (afterany)."""
        if not after:
            return
        extra: dict[str, Any] = dict(OmegaConf.to_container(self.cfg.cluster.additional) or {})
        extra["dependency"] = "afterany:" + ":".join(_arrays(j.job_id for j in after))
        executor.update_parameters(slurm_additional_parameters=extra)

    def withdraw(self, jobs: Sequence[submitit.Job]) -> None:
        """The array whose reducer SLURM refused would run for nothing."""
        if jobs:
            subprocess.run(["scancel", *_arrays([jobs[0].job_id])], check=False)

    @classmethod
    def job_states(cls, run: Run, subs: Sequence[dict[str, Any]], jobs: Mapping[Key, str],
                   shots: Mapping[Key, dict[str, Any] | None]) -> dict[Key, str]:
        """What SLURM says of each job; ``-`` for one it no longer knows (or on a machine without SLURM)."""
        scheduler = _scheduler_states(list(jobs.values()))
        return {key: scheduler.get(job, "-") for key, job in jobs.items()}

    @classmethod
    def cancel_jobs(cls, run: Run, subs: Sequence[dict[str, Any]]) -> list[str]:
        """``scancel`` of every array (and single job) the run recorded; SLURM ignores those already over."""
        arrays = _arrays(job_ids(subs))
        subprocess.run(["scancel", *arrays], check=False)
        return arrays


def _arrays(ids: Iterable[str]) -> list[str]:
    """The arrays (or single jobs) of some job ids: ``1234_5`` is task 5 of array 1234."""
    return sorted({j.split("_")[0] for j in ids})


def _scheduler_states(ids: list[str]) -> dict[str, str]:
    """State per job id: squeue for queued/running jobs, sacct (when accounting runs) for the rest."""
    states: dict[str, str] = {}
    if not ids or shutil.which("squeue") is None:
        return states
    arrays = ",".join(_arrays(ids))
    out = subprocess.run(["squeue", "-h", "-r", "-j", arrays, "-o", "%i|%T"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        job, _, state = line.partition("|")
        states[job] = state
    if shutil.which("sacct"):
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", arrays, "-o", "JobID,State"], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            job, _, state = line.partition("|")
            states.setdefault(job, state.split()[0] if state else "UNKNOWN")
    return states

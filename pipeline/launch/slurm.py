"""The SLURM backend: one ``sbatch --array`` per stage, throttled by ``cluster.array_parallelism``; the
reducer, and the next step of a chain, depend on it with ``afterany`` (an ``afterok`` never fires when one
task fails: each step checks its own inputs). A per-GPU stage (train) runs ``--ntasks-per-node``
processes per job. Every ``cluster.*`` key maps to an sbatch option; reducers ask for no GPU. A job's state
is SLURM's (``squeue``, then ``sacct`` for jobs that left the queue); a cancel is ``scancel`` of each array."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import submitit

from pipeline.config import ConfigError
from pipeline.launch.base import BackendSettings, Key, Launcher, check_one_process_per_gpu, job_ids
from pipeline.runs import Run
from pipeline.settings import knob


@dataclass(frozen=True)
class SlurmSettings(BackendSettings):
    """A real SLURM cluster through submitit. Every field maps to an sbatch option."""

    kind: str = knob("slurm", "The backend: cluster=NAME picks it, with its settings.")
    array_parallelism: int = knob(64, "--array=...%N: tasks of one array that may run at once.", minimum=1)
    cpus_per_task: int = knob(2, "--cpus-per-task (also the torch thread count).", minimum=1)
    timeout_min: int = knob(240, "--time of a shard task, minutes.", minimum=1)
    partition: str | None = knob(None, "--partition (null: the cluster's default).")
    account: str | None = knob(None, "--account.")
    qos: str | None = knob(None, "--qos.")
    reduce_timeout_min: int = knob(60, "--time of the reduce job (it starts once the array is done).", minimum=1)
    nodes: int = knob(1, "--nodes.", minimum=1)
    gpus_per_node: int = knob(0, "--gpus-per-node.", minimum=0)
    tasks_per_node: int | None = knob(None, "--ntasks-per-node of a train job (null: one per GPU, at least 1).", minimum=1)
    mem_gb: int | None = knob(None, "--mem, GB (null: the partition's default).", minimum=1)
    constraint: str | None = knob(None, "--constraint, e.g. v100.")
    signal_delay_s: int = knob(120, "--signal=USR2@N: time to checkpoint before the limit (SLURM may send it up to 60 s "
                                    "earlier).", minimum=1)
    max_requeues: int = knob(3, "Requeues after preemption or a time limit, before the job counts as failed.", minimum=0)
    additional: dict[str, Any] = knob({}, "Any other sbatch flag, e.g. {exclude: \"node[01-02]\"}.")

    def validate(self, prefix: str) -> None:
        """The signal must come before the limit, and this machine must be able to submit."""
        if self.timeout_min * 60 <= self.signal_delay_s + 60:
            raise ConfigError(f"{prefix}.signal_delay_s={self.signal_delay_s} with {prefix}.timeout_min={self.timeout_min}: "
                              "SLURM may send the signal up to 60 s early, so keep timeout_min x 60 > signal_delay_s + 60")
        if shutil.which("sbatch") is None:
            raise ConfigError("cluster=slurm: no 'sbatch' on PATH; run on a SLURM login node, or use cluster=local")

    def check_per_gpu(self) -> None:
        """One process per GPU, and no more GPUs than the partition's nodes have (its GRES)."""
        check_one_process_per_gpu(self.tasks_per_node, self.gpus_per_node)
        wanted = self.gpus_per_node
        if wanted and shutil.which("sinfo"):
            args = ["sinfo", "-h", "-o", "%G"] + (["-p", str(self.partition)] if self.partition else [])
            gres = subprocess.run(args, capture_output=True, text=True).stdout.split()
            counts = [int(m.group(1)) for g in gres if (m := re.match(r"gpu(?::[^:(]+)?:(\d+)", g))]
            if max(counts, default=0) < wanted:
                where = f"partition {self.partition}" if self.partition else "the default partition"
                raise ConfigError(f"cluster.gpus_per_node={wanted}: the nodes of {where} have at most {max(counts, default=0)} "
                                  f"GPU(s) (sinfo %G: {' '.join(gres) or 'none'})")


class SlurmLauncher(Launcher):
    """cluster=slurm."""

    kind = "slurm"
    settings = SlurmSettings

    def executor(self, name: str, timeout_min: int, processes: int, gpus: int) -> submitit.AutoExecutor:
        c = self.cluster
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
            slurm_additional_parameters=dict(c.additional) or None,
        )
        return executor

    def reduce_limit(self) -> int:
        return self.cluster.reduce_timeout_min

    def watch_hint(self, name: str) -> str:
        return f"squeue -n {name}"

    def order_after(self, executor: submitit.Executor, after: Sequence[submitit.Job]) -> None:
        """Start after every given job has ended, whatever its outcome (afterany)."""
        if not after:
            return
        extra: dict[str, Any] = dict(self.cluster.additional)
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

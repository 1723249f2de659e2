"""The SLURM backend: one ``sbatch --array`` per stage, throttled by ``cluster.array_parallelism``; the
reducer, and the next step of a chain, depend on it with ``afterany`` (an ``afterok`` never fires when one
task fails: each step checks its own inputs). A per-GPU stage (train) runs ``--ntasks-per-node``
processes per job. Every ``cluster.*`` key maps to an sbatch option; reducers ask for no GPU."""

from __future__ import annotations

import subprocess
from typing import Any, Sequence

import submitit
from omegaconf import OmegaConf

from pipeline.launch.base import Launcher


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
        ids = sorted({j.job_id.split("_")[0] for j in after})
        extra: dict[str, Any] = dict(OmegaConf.to_container(self.cfg.cluster.additional) or {})
        extra["dependency"] = "afterany:" + ":".join(ids)
        executor.update_parameters(slurm_additional_parameters=extra)

    def withdraw(self, jobs: Sequence[submitit.Job]) -> None:
        """The array whose reducer SLURM refused would run for nothing."""
        if jobs:
            subprocess.run(["scancel", jobs[0].job_id.split("_")[0]], check=False)

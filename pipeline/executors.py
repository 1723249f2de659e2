"""submitit executors: a stage's array, then its reducer ordered after it, on any cluster kind; chains of
stages (``stage=all``), each step after the one before it.

Only the ``cluster`` config differs between kinds:
- ``slurm``: one ``sbatch --array`` per stage; its reducer, and the next step of a chain, depend on it with
  ``afterany`` (an ``afterok`` never fires when one task fails): each step checks its own inputs.
  A per-GPU stage (train) runs ``--ntasks-per-node`` processes per job.
- ``local``: submitit's local executor starts every job at once and drops dependencies, so shards throttle
  themselves with slot locks and every job first waits for the processes it depends on.
- ``debug``: everything runs in this process, in order, as it is submitted.
Every submission is recorded in ``launch/jobs.jsonl`` for the status and cancel commands.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import time
from typing import Any, Callable, Sequence

import submitit
from omegaconf import DictConfig, OmegaConf

from pipeline.config import ConfigError
from pipeline.local_executor import DetachedLocalExecutor
from pipeline.runs import Run
from pipeline.tasks import Process, ReduceJob, ShardJob, ShardTask, process_start

JOBS_FILE = "jobs.jsonl"


class SubmissionRefused(ConfigError):
    """The scheduler refused a job (an unknown partition, an impossible request): its words, on one line."""


@contextlib.contextmanager
def _scheduler_refusal(what: str):
    """submitit prints sbatch's stderr and raises with it; make that one line naming what was refused."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    except submitit.core.utils.FailedJobError as err:
        words = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or captured.getvalue().strip()
        raise SubmissionRefused(f"SLURM refused the {what}: {words}") from None


def job_name(stage: str, run_id: str) -> str:
    """Reads well in ``squeue``: ``gsm8k-debate-20261124-153012-a3f9``."""
    return f"gsm8k-{stage}-{run_id}"


class Launcher:
    """Submits one stage of one run through the configured submitit executor."""

    def __init__(self, cfg: DictConfig, run: Run) -> None:
        self.cfg = cfg
        self.run = run
        self.kind = cfg.cluster.kind
        self._progress = OmegaConf.to_container(cfg.progress, resolve=True)

    def _executor(self, name: str, timeout_min: int, processes: int = 1) -> submitit.Executor:
        c = self.cfg.cluster
        if self.kind == "local":
            return self._local_executor(timeout_min, processes)
        extra = {"slurm_max_num_timeout": int(c.max_requeues)} if self.kind == "slurm" else {}
        executor = submitit.AutoExecutor(folder=self.run.launch_dir, cluster=self.kind, **extra)
        params: dict[str, Any] = {"name": name, "timeout_min": timeout_min}
        if self.kind == "slurm":
            params.update(
                cpus_per_task=int(c.cpus_per_task),
                nodes=int(c.nodes),
                tasks_per_node=processes,
                gpus_per_node=int(c.gpus_per_node) or None,
                mem_gb=c.mem_gb,
                slurm_partition=c.partition,
                slurm_account=c.account,
                slurm_qos=c.qos,
                slurm_constraint=c.constraint,
                slurm_array_parallelism=int(c.array_parallelism),
                slurm_signal_delay_s=int(c.signal_delay_s),
                slurm_additional_parameters=OmegaConf.to_container(c.additional) or None,
            )
        executor.update_parameters(**params)
        return executor

    def _local_executor(self, timeout_min: int, processes: int) -> DetachedLocalExecutor:
        """submitit's local executor, its jobs detached from this terminal (``pipeline.local_executor``)."""
        executor = DetachedLocalExecutor(folder=self.run.launch_dir)
        # submitit's local executor hides every GPU (CUDA_VISIBLE_DEVICES="") unless asked for some.
        params: dict[str, Any] = {"timeout_min": timeout_min, "tasks_per_node": processes, "gpus_per_node": self._local_gpus()}
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        if visible and all(part.strip().isdigit() for part in visible.split(",")):
            params.update(visible_gpus=tuple(int(part) for part in visible.split(",")))
        executor.update_parameters(**params)
        return executor

    def _local_gpus(self) -> int:
        """GPUs a local job sees: ``cluster.gpus_per_node``, or every GPU of this machine."""
        gpus = OmegaConf.select(self.cfg, "cluster.gpus_per_node")
        if gpus is None:
            import torch

            gpus = torch.cuda.device_count()
        return int(gpus)

    def processes(self, per_gpu: bool) -> int:
        """Processes per job: for a per-GPU stage (train), ``cluster.tasks_per_node`` or one per GPU; else one."""
        if not per_gpu or self.kind == "debug":
            return 1
        if OmegaConf.select(self.cfg, "cluster.tasks_per_node"):
            return int(self.cfg.cluster.tasks_per_node)
        gpus = self._local_gpus() if self.kind == "local" else int(self.cfg.cluster.gpus_per_node)
        return max(1, gpus)

    def _reduce_limit(self) -> int:
        """A reducer's time limit. On the local executor it waits for the earlier jobs inside its own job,
        so it gets their limit."""
        return int(self.cfg.cluster.reduce_timeout_min if self.kind == "slurm" else self.cfg.cluster.timeout_min)

    def _depend(self, executor: submitit.Executor, after: Sequence[submitit.Job]) -> None:
        """SLURM: start after every given job has ended, whatever its outcome (afterany)."""
        if self.kind != "slurm" or not after:
            return
        ids = sorted({j.job_id.split("_")[0] for j in after})
        extra = dict(OmegaConf.to_container(self.cfg.cluster.additional) or {})
        extra["dependency"] = "afterany:" + ":".join(ids)
        executor.update_parameters(slurm_additional_parameters=extra)

    def _pids(self, jobs: Sequence[submitit.Job]) -> list[Process] | None:
        """Local jobs to wait for, each as (pid, start time): a pid alone could be another process by then."""
        return [(int(j.job_id), process_start(int(j.job_id))) for j in jobs] if self.kind == "local" else None

    def submit(
        self,
        where: str,
        task_fn: Callable[[ShardTask], dict[str, Any]],
        tasks: Sequence[ShardTask],
        reduce_fn: Callable[[str, str], dict[str, Any]],
        *,
        per_gpu: bool = False,
        after: Sequence[submitit.Job] = (),
    ) -> tuple[list[submitit.Job], submitit.Job]:
        """The stage's array, then its reducer; both after ``after`` (the previous step of a chain).

        Returns the jobs and records them in launch/. A per-GPU stage (train) runs one process per GPU in
        each job; on the local executor its jobs run one after the other (each takes every GPU).
        """
        name = job_name(where, self.run.run_id)
        processes = self.processes(per_gpu)
        jobs: list[submitit.Job] = []
        if tasks:
            executor = self._executor(name, int(self.cfg.cluster.timeout_min), processes)
            self._depend(executor, after)
            with _scheduler_refusal(f"{where} array"):
                if per_gpu and self.kind == "local":
                    for task in tasks:
                        jobs.append(executor.submit(ShardJob(task_fn, None, self._pids([*after, *jobs])), task))
                else:
                    slots = int(self.cfg.cluster.array_parallelism) if self.kind == "local" else None
                    jobs = executor.map_array(ShardJob(task_fn, slots, self._pids(after)), list(tasks))
        reducer = self._executor(f"{name}-reduce", self._reduce_limit())
        self._depend(reducer, jobs or after)
        if self.kind == "debug":
            for job in jobs:
                _debug_run(job)
        try:
            with _scheduler_refusal(f"{where} reduce job"):
                reduce_job = reducer.submit(ReduceJob(reduce_fn, self._progress, self._pids([*after, *jobs])), str(self.run.root), where)
        except SubmissionRefused:
            if self.kind == "slurm" and jobs:
                subprocess.run(["scancel", jobs[0].job_id.split("_")[0]], check=False)
            raise
        if self.kind == "debug":
            _debug_run(reduce_job)  # before the next step of a chain, as on the other executors
        self._record(where, name, tasks, jobs, reduce_job)
        return jobs, reduce_job

    def submit_summary(self, fn: Callable[[str, str], dict[str, Any]], after: Sequence[submitit.Job]) -> submitit.Job:
        """The last job of a chain: after everything, whatever its outcome."""
        executor = self._executor(job_name("summary", self.run.run_id), self._reduce_limit())
        self._depend(executor, after)
        with _scheduler_refusal("summary job"):
            job = executor.submit(ReduceJob(fn, self._progress, self._pids(after)), str(self.run.root), "summary")
        self._record("summary", job_name("summary", self.run.run_id), [], [], job)
        return job

    def _record(self, where: str, name: str, tasks: Sequence[ShardTask], jobs: Sequence[submitit.Job], reduce_job: submitit.Job) -> None:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "stage": where,
            "cluster": self.kind,
            "name": name,
            "shards": {t.unit.label: j.job_id for t, j in zip(tasks, jobs)},
            "reduce": reduce_job.job_id,
        }
        if self.kind == "local":  # a local job id is a pid: its start time tells it from a later process of that pid
            entry["started"] = {j.job_id: process_start(int(j.job_id)) for j in (*jobs, reduce_job)}
        self.run.launch_dir.mkdir(parents=True, exist_ok=True)
        with (self.run.launch_dir / JOBS_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


def _debug_run(job: submitit.Job) -> None:
    """The debug executor runs a job when its result is asked for; a failed shard must not stop the reducer."""
    try:
        job.result()
    except Exception:  # noqa: BLE001 - the reducer reports incomplete shards; the error is in the task log
        pass


def submissions(run: Run) -> list[dict[str, Any]]:
    """Every submission recorded for a run, oldest first."""
    path = run.launch_dir / JOBS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

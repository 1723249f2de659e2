"""The local backend: submitit's local executor, detached, with the ordering and throttle it lacks
(``local_gate``), and the status and cancel of its jobs (processes, named by pid and start time: ``process``).

Every job runs detached from the terminal that submitted it, as SLURM jobs do. submitit (1.5) starts each
local job's controller with the submitter's stdin, stdout and stderr, in the submitter's process group:
a Ctrl-C in that terminal would kill every job of the run, a cancel would print each controller's
``KeyboardInterrupt`` traceback into that terminal, and ``submit.py ... | tee log`` would block until the
last job ends. Here the controller starts in a session of its own, reads nothing, and writes to
``launch/<job id>_controller.log``. A per-GPU stage's jobs (train) run one after the other, each taking
every GPU it is given.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import submitit
from submitit.local.local import LocalJob

from pipeline.config import ConfigError
from pipeline.launch.base import BackendSettings, Key, Launcher, check_one_process_per_gpu, ended_state, job_ids
from pipeline.launch.local_gate import Dependency, LocalGate
from pipeline.launch.process import interrupt, process_start
from pipeline.jobs import ShardJob, ShardTask
from pipeline.runs import Run
from pipeline.settings import knob


class DetachedLocalExecutor(submitit.LocalExecutor):
    """``submitit.LocalExecutor`` whose jobs do not share the submitter's terminal or process group.

    Why this overrides ``_submit_command`` (the method each submitit executor implements to start one job)
    and repeats what submitit 1.5.4's does: it starts the controller through ``local.start_controller``, whose
    ``subprocess.Popen`` is given no stdin, stdout or session, and no parameter reaches them (``setup`` only
    prefixes shell commands, which run in the same process group). A process's session is chosen when it
    starts, so this starts the controller itself: submitit's command and environment (the controller's
    protocol: ``submitit.local._local`` reads them), the same GPUs and the same ``LocalJob``, only started
    reading /dev/null, writing its log, in a session of its own. ``tests/test_watchable.py`` compares the
    two starts, so a submitit that changes its own fails there."""

    def _submit_command(self, command: str) -> LocalJob:
        tasks = self.parameters.get("tasks_per_node", 1)
        gpus = self.parameters.get("gpus_per_node", 0)
        visible = self.parameters.get("visible_gpus", ())
        setup = self.parameters.get("setup", ())
        env = dict(os.environ)
        env.update(
            SUBMITIT_LOCAL_NTASKS=str(tasks),
            SUBMITIT_LOCAL_COMMAND=command,
            SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * self.parameters.get("timeout_min", 2.0))),
            SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(self.parameters.get("signal_delay_s", 30))),
            SUBMITIT_LOCAL_NODEID="0",
            SUBMITIT_LOCAL_JOB_NUM_NODES="1",
            SUBMITIT_STDERR_TO_STDOUT="1" if self.parameters.get("stderr_to_stdout", False) else "",
            SUBMITIT_EXECUTOR="local",
            CUDA_VISIBLE_DEVICES=",".join(str(k) for k in (range(gpus) if visible == () else visible[:gpus])),
            SUBMITIT_LOCAL_WITH_SHELL="1" if setup else "",
        )
        controller: Any = [sys.executable, "-m", "submitit.local._local", str(self.folder)]
        if setup:
            controller = " && ".join([*setup, shlex.join(controller)])
        self.folder.mkdir(parents=True, exist_ok=True)
        # The log is named after the job id (the pid) once it is known; the open file keeps its data.
        fd, scratch = tempfile.mkstemp(prefix="controller-", suffix=".log", dir=self.folder)
        try:
            process = subprocess.Popen(controller, shell=bool(setup), env=env, stdin=subprocess.DEVNULL, stdout=fd,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            os.close(fd)
        os.replace(scratch, self.folder / f"{process.pid}_controller.log")
        # A job that once had this pid may have left its results under this id: they are not this job's end.
        # (This job reads nothing before its pickle, which submitit moves into place after this returns.)
        for stale in self.folder.glob(f"{process.pid}_*_result.pkl"):
            stale.unlink()
        return LocalJob(folder=self.folder, job_id=str(process.pid), process=process, tasks=list(range(tasks)))


@dataclass(frozen=True)
class LocalSettings(BackendSettings):
    """submitit's local executor: every task is a process on this machine. No scheduler needed."""

    kind: str = knob("local", "The backend: cluster=NAME picks it, with its settings.")
    array_parallelism: int = knob(2, "Tasks of one array that may run at once (each holds a slot lock in the run's "
                                     "launch folder).", minimum=1)
    cpus_per_task: int | None = knob(None, "Torch threads per task; null: this machine's cores / array_parallelism "
                                           "(more threads than cores makes every task many times slower).", minimum=1)
    timeout_min: int = knob(240, "submitit kills a local job after this many minutes.", minimum=1)
    gpus_per_node: int | None = knob(None, "GPUs the train stage uses, one process each (null: every GPU of this "
                                           "machine; none: one CPU process).", minimum=0)
    tasks_per_node: int | None = knob(None, "Processes per train job (null: one per GPU, or one on a CPU). More than one "
                                            "on a CPU: torch.distributed on gloo.", minimum=1)

    def check_per_gpu(self) -> None:
        """One process per GPU, and no more GPUs than this machine has."""
        gpus = self.gpus_per_node
        if gpus is None:
            import torch

            gpus = torch.cuda.device_count()
        check_one_process_per_gpu(self.tasks_per_node, gpus)
        if self.gpus_per_node:
            import torch

            have = torch.cuda.device_count()
            if self.gpus_per_node > have:
                raise ConfigError(f"cluster.gpus_per_node={self.gpus_per_node}: this machine has {have} GPU(s)")


class LocalLauncher(Launcher):
    """cluster=local: submitit's local executor, detached, with the ordering and throttle it lacks."""

    kind = "local"
    settings = LocalSettings

    def executor(self, name: str, timeout_min: int, processes: int, gpus: int) -> DetachedLocalExecutor:
        executor = DetachedLocalExecutor(folder=self.run.launch_dir)
        # submitit's local executor hides every GPU (CUDA_VISIBLE_DEVICES="") unless asked for some.
        params: dict[str, Any] = {"timeout_min": timeout_min, "tasks_per_node": processes, "gpus_per_node": gpus}
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        if visible and all(part.strip().isdigit() for part in visible.split(",")):
            params.update(visible_gpus=tuple(int(part) for part in visible.split(",")))
        executor.update_parameters(**params)
        return executor

    def gpus(self) -> int:
        """``cluster.gpus_per_node``, or every GPU of this machine."""
        gpus = self.cluster.gpus_per_node
        if gpus is None:
            import torch

            gpus = torch.cuda.device_count()
        return int(gpus)

    def gate(self, after: Sequence[submitit.Job], array: bool) -> LocalGate:
        slots = (self.run.launch_dir / "slots", self.cluster.array_parallelism) if array else None
        return LocalGate([Dependency.of(j) for j in after], slots)

    def submit_array(self, executor: submitit.Executor, fn: Callable[[ShardTask], dict[str, Any]], tasks: Sequence[ShardTask],
                     per_gpu: bool, after: Sequence[submitit.Job]) -> list[submitit.Job]:
        """A per-GPU stage's jobs one after the other (each takes every GPU); an array's all at once, each
        waiting for a slot."""
        if not per_gpu:
            return super().submit_array(executor, fn, tasks, per_gpu, after)
        jobs: list[submitit.Job] = []
        for task in tasks:
            jobs.append(executor.submit(ShardJob(fn, LocalGate([Dependency.of(j) for j in [*after, *jobs]])), task))
        return jobs

    def recorded(self, jobs: Sequence[submitit.Job]) -> dict[str, Any]:
        """A local job id is a pid: its start time tells it from a later process of that pid."""
        return {"started": {j.job_id: process_start(int(j.job_id)) for j in jobs}}

    @classmethod
    def job_states(cls, run: Run, subs: Sequence[dict[str, Any]], jobs: Mapping[Key, str],
                   shots: Mapping[Key, dict[str, Any] | None]) -> dict[Key, str]:
        """A local job (a pid) runs until its work is over (``Dependency.finished``: its results written, or its
        process gone): PENDING while its progress file says it waits (for a slot of
        ``cluster.array_parallelism``, or for an earlier job), as SLURM shows a job held by its array's throttle
        or a dependency; RUNNING once its work has begun. An ended one is as its progress file says."""
        started = _started(subs)
        states = {}
        for key, job in jobs.items():
            shot = shots.get(key)
            if job.isdigit() and not Dependency.recorded(run.launch_dir, job, started.get(job)).finished():
                states[key] = "PENDING" if shot is not None and shot["state"] == "pending" else "RUNNING"
            else:
                states[key] = ended_state(shot)
        return states

    @classmethod
    def cancel_jobs(cls, run: Run, subs: Sequence[dict[str, Any]]) -> list[str]:
        """SIGINT to each recorded job's process that still runs, and to no process it cannot identify."""
        started = _started(subs)
        return [job for job in job_ids(subs) if job.isdigit() and interrupt(int(job), started.get(job))]


def _started(subs: Sequence[dict[str, Any]]) -> dict[str, int | None]:
    """The recorded start time of every local job of the run (submissions made before they were recorded
    have none: such jobs are never taken for running, nor signalled)."""
    return {job: start for sub in subs for job, start in sub.get("started", {}).items()}

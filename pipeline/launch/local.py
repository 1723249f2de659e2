"""The local backend: submitit's local executor, with what it lacks supplied here and nowhere else.

submitit's local executor starts every job at once, drops dependencies and throttles nothing. So:
- each array task holds one of ``cluster.array_parallelism`` slot locks while it works (a counting
  semaphore of lock files in the run's ``launch/slots/``);
- each job ordered after others (a reducer after its array, a chain's step after the previous step) first
  waits until each of them has ended, whatever its outcome: SLURM's ``afterany``, which this suite uses for
  every edge (a step checks its own inputs, a reducer reports what is missing). A job has ended once each of
  its tasks wrote the result file submitit writes when a task returns or raises
  (``launch/<job id>_<task>_result.pkl``) and its process is gone (or is slow to exit: ``EXIT_GRACE_S``). A
  job that never will write them (SIGKILL, a cancel) has ended once its process is gone, known by pid and
  start time (a pid alone could name another process by then). A local
  requeue (a time limit) writes no result and keeps the process, so its dependents wait on. (Not the
  progress files: only rank 0 writes one, and it reads ``failed`` while a requeued job restarts.)
- a per-GPU stage's jobs (train) run one after the other, each taking every GPU it is given.
A job waits inside its process (``LocalGate``), reporting ``pending`` with what it waits for, as SLURM
shows a job held by its array's throttle or a dependency.

Every job runs detached from the terminal that submitted it, as SLURM jobs do. submitit (1.5) starts each
local job's controller with the submitter's stdin, stdout and stderr, in the submitter's process group:
a Ctrl-C in that terminal would kill every job of the run, a cancel would print each controller's
``KeyboardInterrupt`` traceback into that terminal, and ``submit.py ... | tee log`` would block until the
last job ends. Here the controller starts in a session of its own, reads nothing, and writes to
``launch/<job id>_controller.log``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import submitit
from submitit.core.utils import JobPaths
from submitit.local import local

from pipeline import progress
from pipeline.config import ConfigError
from pipeline.launch.base import BackendSettings, Launcher, check_one_process_per_gpu
from pipeline.jobs import ShardJob, ShardTask
from pipeline.settings import knob

log = logging.getLogger(__name__)

# A local job as (pid, start time in clock ticks since boot): one process, even after its pid is reused.
Process = tuple[int, "int | None"]


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> int | None:
    """When the process started (clock ticks since boot, field 22 of ``/proc/<pid>/stat``), or None when there
    is no such process. With the pid it names one process: a pid the system reused has another start time."""
    fields = _stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def process_alive(pid: int, started: int | None) -> bool:
    """Whether the process recorded as (``pid``, ``started``) still runs: the same pid with the same start
    time, not a zombie. A process whose start time was not recorded is never taken for alive, so nothing
    waits on, or signals, a process it cannot identify."""
    fields = _stat(pid)
    return started is not None and fields is not None and len(fields) > 19 and int(fields[19]) == started and fields[0] != "Z"


class _Slot:
    """An exclusive lock on one of ``count`` slot files: a counting semaphore across processes."""

    def __init__(self, folder: Path, count: int) -> None:
        self.folder, self.count = folder, count
        self.fd: int | None = None

    def __enter__(self) -> "_Slot":
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            for k in range(self.count):
                fd = os.open(self.folder / f"slot-{k}.lock", os.O_CREAT | os.O_RDWR, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self.fd = fd
                    return self
                except BlockingIOError:
                    os.close(fd)
            time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)


# Seconds a job whose tasks all wrote their results may take to exit before the jobs after it start anyway
# (measured: 12-15 s between the result and the exit of a CPU shard on a loaded 2-core machine).
EXIT_GRACE_S = 120.0


@dataclass(frozen=True)
class Dependency:
    """A local job that a later one comes after: the result files its tasks write when they end, and its
    process, for a job that ends without writing them."""

    results: tuple[Path, ...]
    process: Process

    @classmethod
    def of(cls, job: submitit.Job) -> "Dependency":
        """A job just submitted: its process runs, so its start time is read now."""
        return cls.recorded(job.paths.folder, job.job_id, process_start(int(job.job_id)), job.num_tasks)

    @classmethod
    def recorded(cls, folder: Path, job_id: str, started: int | None, tasks: int = 1) -> "Dependency":
        """A job as ``launch/jobs.jsonl`` keeps it (which keeps no task count: task 0 then stands for the job)."""
        results = tuple(JobPaths(folder, job_id, k).result_pickle for k in range(tasks))
        return cls(results, (int(job_id), started))

    def finished(self) -> bool:
        """Every task wrote its result (success or error), or the process is gone without them: the job's
        work is over (what the status command shows), though its process may still be exiting."""
        return all(path.exists() for path in self.results) or not process_alive(*self.process)

    def ended(self) -> bool:
        """The job's process is gone (after its results, or without them: SIGKILL, a cancel), or every task
        wrote its result (success or error) over ``EXIT_GRACE_S`` ago. Waiting for the exit as well keeps a
        job that has finished but not yet exited (its model still in GPU memory) from overlapping the next;
        the grace keeps a process that hangs on its way out from holding the next one back for ever."""
        if not process_alive(*self.process):
            return True
        now = time.time()
        return all(path.exists() and now - path.stat().st_mtime > EXIT_GRACE_S for path in self.results)


class LocalGate:
    """What holds a local job until it may run: the end of the earlier jobs it comes after, then (an array
    task) a free slot. Pickled with the job; entered inside the job's process."""

    def __init__(self, after: list[Dependency], slots: tuple[Path, int] | None = None) -> None:
        self.after, self.slots = after, slots
        self._slot: _Slot | None = None

    def __enter__(self) -> "LocalGate":
        if self.after:
            progress.current().set_state("pending", f"waiting for {len(self.after)} earlier job(s) to end")
            log.info("waiting for %d earlier jobs to end", len(self.after))
            while not all(dependency.ended() for dependency in self.after):
                time.sleep(1.0)
        if self.slots is not None:
            folder, count = self.slots
            progress.current().set_state("pending", f"waiting for a free slot (cluster.array_parallelism={count})")
            self._slot = _Slot(folder, count).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._slot is not None:
            self._slot.__exit__(*exc)


class DetachedLocalExecutor(submitit.LocalExecutor):
    """``submitit.LocalExecutor`` whose jobs do not share the submitter's terminal or process group."""

    def _submit_command(self, command: str) -> local.LocalJob:
        # submitit's LocalExecutor._submit_command, with the controller started by _start_controller.
        ntasks = self.parameters.get("tasks_per_node", 1)
        n_gpus = self.parameters.get("gpus_per_node", 0)
        visible_gpus = self.parameters.get("visible_gpus", ())
        gpus = range(n_gpus) if visible_gpus == () else visible_gpus[:n_gpus]
        process = _start_controller(
            folder=self.folder,
            command=command,
            tasks_per_node=ntasks,
            cuda_devices=",".join(str(k) for k in gpus),
            timeout_min=self.parameters.get("timeout_min", 2.0),
            signal_delay_s=self.parameters.get("signal_delay_s", 30),
            stderr_to_stdout=self.parameters.get("stderr_to_stdout", False),
            setup=self.parameters.get("setup", ()),
        )
        # A job that once had this pid may have left its results under this id: they are not this job's end.
        # (This job reads nothing before its pickle, which submitit moves into place after this returns.)
        for stale in Path(self.folder).glob(f"{process.pid}_*_result.pkl"):
            stale.unlink()
        return local.LocalJob(folder=self.folder, job_id=str(process.pid), process=process, tasks=list(range(ntasks)))


def _start_controller(folder: Path, command: str, tasks_per_node: int, cuda_devices: str, timeout_min: float,
                      signal_delay_s: int, stderr_to_stdout: bool, setup: Sequence[str]) -> "subprocess.Popen[bytes]":
    """submitit's ``local.start_controller`` (same environment, same command), detached."""
    env = dict(os.environ)
    env.update(
        SUBMITIT_LOCAL_NTASKS=str(tasks_per_node),
        SUBMITIT_LOCAL_COMMAND=command,
        SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * timeout_min)),
        SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(signal_delay_s)),
        SUBMITIT_LOCAL_NODEID="0",
        SUBMITIT_LOCAL_JOB_NUM_NODES="1",
        SUBMITIT_STDERR_TO_STDOUT="1" if stderr_to_stdout else "",
        SUBMITIT_EXECUTOR="local",
        CUDA_VISIBLE_DEVICES=cuda_devices,
        SUBMITIT_LOCAL_WITH_SHELL="1" if setup else "",
    )
    proc_cmd: Any = [sys.executable, "-m", "submitit.local._local", str(folder)]
    if setup:
        proc_cmd = " && ".join([*setup, shlex.join(proc_cmd)])
    Path(folder).mkdir(parents=True, exist_ok=True)
    # The log is named after the job id (the pid) once it is known; the open file keeps its data.
    fd, scratch = tempfile.mkstemp(prefix="controller-", suffix=".log", dir=folder)
    try:
        process = subprocess.Popen(proc_cmd, shell=bool(setup), env=env, stdin=subprocess.DEVNULL, stdout=fd,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        os.close(fd)
    os.replace(scratch, Path(folder) / f"{process.pid}_controller.log")
    return process


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
        return LocalGate(_dependencies(after), slots)

    def submit_array(self, executor: submitit.Executor, fn: Callable[[ShardTask], dict[str, Any]], tasks: Sequence[ShardTask],
                     per_gpu: bool, after: Sequence[submitit.Job]) -> list[submitit.Job]:
        """A per-GPU stage's jobs one after the other (each takes every GPU); an array's all at once, each
        waiting for a slot."""
        if not per_gpu:
            return super().submit_array(executor, fn, tasks, per_gpu, after)
        jobs: list[submitit.Job] = []
        for task in tasks:
            jobs.append(executor.submit(ShardJob(fn, LocalGate(_dependencies([*after, *jobs]))), task))
        return jobs

    def recorded(self, jobs: Sequence[submitit.Job]) -> dict[str, Any]:
        """A local job id is a pid: its start time tells it from a later process of that pid."""
        return {"started": {j.job_id: process_start(int(j.job_id)) for j in jobs}}


def _dependencies(jobs: Sequence[submitit.Job]) -> list[Dependency]:
    """Local jobs to wait for."""
    return [Dependency.of(j) for j in jobs]

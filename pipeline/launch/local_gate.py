"""What holds a local job until it may run, which submitit's local executor (it starts every job at once,
drops dependencies and throttles nothing) does not:
- each array task holds one of ``cluster.array_parallelism`` slot locks while it works (a counting
  semaphore of lock files in the run's ``launch/slots/``);
- each job ordered after others (a reducer after its array, a chain's step after the previous step) first
  waits until each of them has ended, whatever its outcome: SLURM's ``afterany``, which this suite uses for
  every edge (a step checks its own inputs, a reducer reports what is missing). A job has ended once each of
  its tasks wrote the result file submitit writes when a task returns or raises
  (``launch/<job id>_<task>_result.pkl``) and its process is gone (or is slow to exit: ``EXIT_GRACE_S``). A
  job that never will write them (SIGKILL, a cancel) has ended once its process is gone, known by pid and
  start time (``process``). A local requeue (a time limit) writes no result and keeps the process, so its
  dependents wait on. (Not the progress files: only rank 0 writes one, and it reads ``failed`` while a
  requeued job restarts.)
A job waits inside its process (``LocalGate``), reporting ``pending`` with what it waits for, as SLURM
shows a job held by its array's throttle or a dependency.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import submitit
from submitit.core.utils import JobPaths

from pipeline import progress
from pipeline.launch.process import Process, process_alive, process_start

log = logging.getLogger(__name__)


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

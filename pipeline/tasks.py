"""What a submitted job runs: a shard task or a reduce task, wrapped for submitit.

Both are :class:`submitit.helpers.Checkpointable`: when SLURM preempts a job or its time limit nears
(``--signal``), submitit requeues the same call, and the shard resumes from its own file. On the local
executor, a shard first takes one of ``array_parallelism`` slot locks (the local executor starts every
array item at once), and the reducer first waits for the shard processes (it ignores dependencies).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import submitit

from pipeline import progress
from pipeline.runs import Run
from pipeline.shards import Unit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardTask:
    """One array item: which run, which stage, which unit of work; the resolved config travels with it."""

    run_root: str
    stage: str
    unit: Unit
    config: dict[str, Any]

    @property
    def run(self) -> Run:
        return Run(Path(self.run_root))

    @property
    def path(self) -> Path:
        """The shard file this task appends to."""
        return self.unit.path(self.run.stage_dir(self.stage))

    @property
    def threads(self) -> int:
        """Torch threads: the cluster's cpus_per_task, or this machine's share per parallel local task."""
        cluster = self.config["cluster"]
        if cluster["cpus_per_task"]:
            return int(cluster["cpus_per_task"])
        return max(1, (os.cpu_count() or 1) // int(cluster["array_parallelism"]))

    @property
    def label(self) -> str:
        return f"{self.stage}-{self.unit.label}"

    @property
    def progress_path(self) -> Path:
        return self.run.progress_path(self.stage, self.unit.label)


def setup_task_logging(run: Run, label: str) -> None:
    """One log file per task under ``logs/``, plus stderr (which submitit or SLURM keeps too)."""
    run.logs_dir.mkdir(parents=True, exist_ok=True)
    # A handler that cannot write (a full disk under submitit's or SLURM's own log files) must not print a
    # traceback per log line; the task log's own handler says it once (_LogFile).
    logging.raiseExceptions = False
    fmt = logging.Formatter(f"%(asctime)s {label} %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in (_LogFile(run.logs_dir / f"{label}.log"), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(fmt)
        root.addHandler(handler)


class _LogFile(logging.FileHandler):
    """A task's log file that, when it cannot be written (a full disk), says so once in one line on stderr
    and carries on: logging's default prints a traceback for every line it fails to write."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            err = sys.exc_info()[1]
            reason = getattr(err, "strerror", None) or str(err)
            print(f"{self.baseFilename}: cannot write the task log ({reason}); logging to stderr only", file=sys.stderr)


@contextlib.contextmanager
def _logged_failure(label: str) -> Iterator[None]:
    """The task's own log and progress file say why it failed (submitit keeps the traceback only in its
    stderr file)."""
    try:
        yield
        progress.current().set_state("done")
    except BaseException as err:
        note = CANCELLED if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"[:300]
        progress.current().set_state("failed", note)
        if isinstance(err, Exception):
            log.error("%s failed: %s: %s", label, type(err).__name__, err)
        raise


# The note of a task stopped by SIGINT: what jobs/cancel.py (and submitit's cancel) sends a local job.
CANCELLED = "cancelled (SIGINT)"


def _start_progress(path: Path, label: str, settings: dict[str, Any], waits: int, slots: int | None) -> None:
    """The task's progress file, from its first moment: ``pending`` while it waits (as SLURM shows a job that
    waits for a dependency or a free array slot), ``running`` once its work starts."""
    reporter = progress.start(path if _rank() == 0 else None, label, float(settings["refresh_s"]), float(settings["log_every_s"]))
    if waits:
        reporter.set_state("pending", f"waiting for {waits} earlier job(s) to end")
    elif slots is not None:
        reporter.set_state("pending", f"waiting for a free slot (cluster.array_parallelism={slots})")


def _rank() -> int:
    """This process's rank in its job: a train job runs one process per GPU, and only rank 0 reports."""
    try:
        return submitit.JobEnvironment().global_rank
    except (RuntimeError, KeyError, ValueError):
        return 0


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


class ShardJob(submitit.helpers.Checkpointable):
    """The array item's callable: ``fn(task)``, under a local slot when the executor has no throttle, and
    after the given local processes (the previous step of a chain) have ended."""

    def __init__(self, fn: Callable[[ShardTask], dict[str, Any]], local_slots: int | None = None, wait_pids: list[Process] | None = None) -> None:
        self.fn = fn
        self.local_slots = local_slots
        self.wait_pids = wait_pids or []

    def __call__(self, task: ShardTask) -> dict[str, Any]:
        setup_task_logging(task.run, task.label)
        _start_progress(task.progress_path, task.label, task.config["progress"], len(self.wait_pids), self.local_slots)
        with _logged_failure(task.label):
            if self.wait_pids:
                log.info("waiting for %d earlier processes to end", len(self.wait_pids))
                _wait_for_pids(self.wait_pids)
            if self.local_slots is None:
                progress.current().set_state("running")
                return self.fn(task)
            with _Slot(task.run.launch_dir / "slots", self.local_slots):
                progress.current().set_state("running")
                return self.fn(task)


Process = tuple[int, "int | None"]


def _wait_for_pids(processes: list[Process]) -> None:
    while any(process_alive(pid, started) for pid, started in processes):
        time.sleep(1.0)


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


class ReduceJob(submitit.helpers.Checkpointable):
    """The reducer's callable: ``fn(run_root, where)``, after the given local processes have ended;
    ``settings`` are the run's ``progress`` settings."""

    def __init__(self, fn: Callable[[str, str], dict[str, Any]], settings: dict[str, Any], wait_pids: list[Process] | None = None) -> None:
        self.fn = fn
        self.settings = settings
        self.wait_pids = wait_pids or []

    def __call__(self, run_root: str, where: str) -> dict[str, Any]:
        label = f"reduce-{where}"
        run = Run(Path(run_root))
        setup_task_logging(run, label)
        _start_progress(run.progress_path(where, REDUCE_LABEL), label, self.settings, len(self.wait_pids), None)
        with _logged_failure(label):
            if self.wait_pids:
                log.info("waiting for %d processes to end", len(self.wait_pids))
                _wait_for_pids(self.wait_pids)
            progress.current().set_state("running")
            return self.fn(run_root, where)


# The progress file of a stage's reducer: ``progress/<where>/_reduce.json``.
REDUCE_LABEL = "_reduce"

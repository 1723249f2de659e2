"""What a submitted job runs: a shard task or a reduce task, wrapped for submitit, and each one's input
(``ShardTask``, ``ReduceTask``: the step's typed config travels in it, pickled by submitit).

Both are :class:`submitit.helpers.Checkpointable`: when SLURM preempts a job or its time limit nears
(``--signal``), submitit requeues the same call, and the shard resumes from its own file. Each sets up its
log and its progress file, passes the backend's gate if it was given one (the local backend's ordering and
slots: ``pipeline.launch.local_gate``), and records how it ended. Nothing here knows which backend runs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import submitit

from pipeline import progress
from pipeline.run_config import ProgressSettings, RunConfig
from pipeline.runs import Run
from pipeline.shards import Unit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardTask:
    """One array item: which run, which step of it (``where``: the stage's folder), which unit of work; the
    step's typed config travels with it (pickled by submitit), so the task reads no file to know its settings."""

    run_root: str
    where: str
    unit: Unit
    config: RunConfig

    @property
    def run(self) -> Run:
        return Run(Path(self.run_root))

    @property
    def path(self) -> Path:
        """The shard file this task appends to."""
        return self.unit.path(self.run.stage_dir(self.where))

    @property
    def threads(self) -> int:
        """Torch threads: the cluster's cpus_per_task, or this machine's share per parallel local task."""
        cluster = self.config.cluster
        if cluster.cpus_per_task:
            return cluster.cpus_per_task
        return max(1, (os.cpu_count() or 1) // cluster.array_parallelism)

    @property
    def label(self) -> str:
        return f"{self.where}-{self.unit.label}"

    @property
    def progress_path(self) -> Path:
        return self.run.progress_path(self.where, self.unit.label)


@dataclass(frozen=True)
class ReduceTask:
    """A reducer's input, as a ShardTask is an array item's: which run, which step of it (``where``; a chain's
    last job: ``summary``), the config of what it reduces (the step's; the summary's: the run's), pickled by
    submitit, so the reducer reads no file to know its settings; and whether the run is a ``stage=all`` chain
    (each step then has its own page, and the run is resumed whole)."""

    run_root: str
    where: str
    config: RunConfig
    chain: bool = False

    @property
    def run(self) -> Run:
        return Run(Path(self.run_root))

    @property
    def resume(self) -> str:
        """The command that submits the run's unfinished work again."""
        return f"python jobs/submit.py stage={'all' if self.chain else self.config.stage} run_id={self.run.run_id}"


def setup_task_logging(run: Run, label: str, level: str) -> None:
    """One log file per task under ``logs/``, plus stderr (which submitit or SLURM keeps too); the suite's
    own loggers at ``level`` (``progress.log_level``)."""
    run.logs_dir.mkdir(parents=True, exist_ok=True)
    # A handler that cannot write (a full disk under submitit's or SLURM's own log files) must not print a
    # traceback per log line; the task log's own handler says it once (_LogFile).
    logging.raiseExceptions = False
    fmt = logging.Formatter(f"%(asctime)s {label} %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    logging.getLogger("pipeline").setLevel(level)  # DEBUG: the suite's own lines, not every library's
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


def _start_progress(path: Path, label: str, shown: ProgressSettings) -> None:
    """The task's progress file, from its first moment (only rank 0 of a job of several processes writes),
    at the intervals of the run's ``progress.*`` keys."""
    progress.start(path if _rank() == 0 else None, label, shown.refresh_s, shown.log_every_s)


def _rank() -> int:
    """This process's rank in its job: a train job runs one process per GPU, and only rank 0 reports."""
    try:
        return submitit.JobEnvironment().global_rank
    except (RuntimeError, KeyError, ValueError):
        return 0


def _held(gate: ContextManager[Any] | None) -> ContextManager[Any]:
    """The backend's gate (it reports ``pending`` with what it waits for), or none."""
    return gate if gate is not None else contextlib.nullcontext()


class ShardJob(submitit.helpers.Checkpointable):
    """The array item's callable: ``fn(task)``, once the backend's ``gate`` (if any) lets it run."""

    def __init__(self, fn: Callable[[ShardTask], dict[str, Any]], gate: ContextManager[Any] | None = None) -> None:
        self.fn = fn
        self.gate = gate

    def __call__(self, task: ShardTask) -> dict[str, Any]:
        setup_task_logging(task.run, task.label, task.config.progress.log_level)
        _start_progress(task.progress_path, task.label, task.config.progress)
        with _logged_failure(task.label), _held(self.gate):
            progress.current().set_state("running")
            return self.fn(task)


class ReduceJob(submitit.helpers.Checkpointable):
    """The reducer's callable: ``fn(task)``, once the backend's ``gate`` (if any) lets it run."""

    def __init__(self, fn: Callable[[ReduceTask], dict[str, Any]], gate: ContextManager[Any] | None = None) -> None:
        self.fn = fn
        self.gate = gate

    def __call__(self, task: ReduceTask) -> dict[str, Any]:
        label = reduce_label(task.where)
        setup_task_logging(task.run, label, task.config.progress.log_level)
        _start_progress(task.run.progress_path(task.where, REDUCE_LABEL), label, task.config.progress)
        with _logged_failure(label), _held(self.gate):
            progress.current().set_state("running")
            return self.fn(task)


# The progress file of a stage's reducer: ``progress/<where>/_reduce.json``.
REDUCE_LABEL = "_reduce"


def reduce_label(where: str) -> str:
    """How a step's reducer reads in its log's name (``logs/reduce-<where>.log``) and its lines."""
    return f"reduce-{where}"

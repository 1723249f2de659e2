"""What every backend shares: a stage's array, then its reducer ordered after it; a chain's summary job
after everything; each submission recorded in ``launch/jobs.jsonl`` for the status and cancel commands.

A backend (``local``, ``slurm``, ``debug``: one small class each) declares its settings (``cluster.*``: a
:class:`BackendSettings` dataclass of ``knob()`` fields, which checks itself) and says how to build its
submitit executor, how a job is ordered after earlier ones, and what else it must do around a submission;
and, for the status and cancel commands, what state its recorded jobs are in and how to cancel them (as
submitit keeps state and cancel on each backend's ``Job``). Job bodies (``pipeline.jobs``) know nothing of
the backend: a backend that holds jobs itself hands them a gate.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator, Mapping, Sequence, TypeVar

import submitit

from pipeline.config import ConfigError
from pipeline.files import append_line
from pipeline.run_config import RunConfig
from pipeline.runs import Run
from pipeline.jobs import CANCELLED, ReduceJob, ReduceTask, ShardJob, ShardTask
from pipeline.settings import knob

JOBS_FILE = "jobs.jsonl"

# What the status command keys its jobs by (a step and a task label); the backend hands the key back.
Key = TypeVar("Key")


class SubmissionRefused(ConfigError):
    """The scheduler refused a job (an unknown partition, an impossible request): its words, on one line."""


@contextlib.contextmanager
def scheduler_refusal(what: str) -> Iterator[None]:
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


@dataclass(frozen=True)
class BackendSettings:
    """What every backend takes (``cluster.*``); a backend's own settings subclass it, in its module."""

    kind: str = knob("", "The backend: cluster=NAME picks it, with its settings.")
    array_parallelism: int = knob(1, "Tasks of one array that may run at once.", minimum=1)
    cpus_per_task: int | None = knob(None, "Torch threads per task; null: this machine's cores / array_parallelism.",
                                     minimum=1)
    timeout_min: int = knob(240, "A job's time limit, minutes.", minimum=1)

    def check_per_gpu(self) -> None:
        """A per-GPU stage (train: one process per GPU) checks what the backend gives it; nothing by default."""


def check_one_process_per_gpu(tasks: int | None, gpus: int | None) -> None:
    """Training runs one process per GPU. One process that sees several GPUs would be wrapped in DataParallel
    by the trainer (slower, and a different batch than asked); several processes on one GPU would share its
    memory."""
    if tasks and gpus and tasks != gpus:
        raise ConfigError(f"cluster.tasks_per_node={tasks} with {gpus} GPU(s) per node: training runs one process per GPU; "
                          f"leave cluster.tasks_per_node unset or set it to {gpus}")


class Launcher:
    """Submits the steps of one run through one backend's submitit executor."""

    kind = ""
    # Its section of the config (``cluster.*``).
    settings: type[BackendSettings] = BackendSettings
    # Whether its jobs have all run by the time they are submitted (the submitter then shows the result).
    runs_at_once = False

    def __init__(self, config: RunConfig, run: Run) -> None:
        self.config = config
        self.cluster = config.cluster
        self.run = run
        jobs = run.launch_dir / JOBS_FILE
        if jobs.exists() and not jobs.is_file():
            raise ConfigError(f"{jobs}: not a file (the run's list of its jobs goes there); move it away, then resubmit")

    # ---- what a backend says -----------------------------------------------------------------------
    def executor(self, name: str, timeout_min: int, processes: int, gpus: int) -> submitit.Executor:
        """A job of ``processes`` tasks holding ``gpus`` GPUs: a stage's array asks for ``gpus()``, its reducer
        and the summary for none (they only read files, and would otherwise wait for a GPU)."""
        raise NotImplementedError

    def gpus(self) -> int:
        """GPUs a job gets."""
        return int(getattr(self.cluster, "gpus_per_node", None) or 0)

    def reduce_limit(self) -> int:
        """A reducer's time limit (minutes)."""
        return self.cluster.timeout_min

    def watch_hint(self, name: str) -> str:
        """Where else the user can watch the jobs named ``name`` (the scheduler's own view); none by default."""
        return ""

    def order_after(self, executor: submitit.Executor, after: Sequence[submitit.Job]) -> None:
        """Make the next submission start after ``after`` (a scheduler dependency); none by default."""

    def gate(self, after: Sequence[submitit.Job], array: bool) -> ContextManager[Any] | None:
        """What holds a job inside its process until it may run; none by default."""
        return None

    def submit_array(self, executor: submitit.Executor, fn: Callable[[ShardTask], dict[str, Any]], tasks: Sequence[ShardTask],
                     per_gpu: bool, after: Sequence[submitit.Job]) -> list[submitit.Job]:
        return executor.map_array(ShardJob(fn, self.gate(after, array=True)), list(tasks))

    def submitted(self, jobs: Sequence[submitit.Job]) -> None:
        """Called with each batch of jobs once submitted."""

    def withdraw(self, jobs: Sequence[submitit.Job]) -> None:
        """Take back jobs whose reducer the scheduler refused; nothing by default."""

    def recorded(self, jobs: Sequence[submitit.Job]) -> dict[str, Any]:
        """What else the backend keeps of a submission in jobs.jsonl."""
        return {}

    # ---- what a backend says of the jobs a run recorded (status, cancel: no config, only the run) ----
    @classmethod
    def job_states(cls, run: Run, subs: Sequence[dict[str, Any]], jobs: Mapping[Key, str],
                   shots: Mapping[Key, dict[str, Any] | None]) -> dict[Key, str]:
        """The state of each job (its id in ``jobs``) in SLURM's words (PENDING, RUNNING, COMPLETED, FAILED,
        CANCELLED, ...), ``-`` where the backend cannot tell; ``shots`` holds the last word of each job's
        progress file, for a backend that keeps no record of its own."""
        return {key: "-" for key in jobs}

    @classmethod
    def cancel_jobs(cls, run: Run, subs: Sequence[dict[str, Any]]) -> list[str]:
        """Cancel every recorded job that may still be queued or running; the ids cancelled."""
        return []

    # ---- shared ------------------------------------------------------------------------------------
    def processes(self, per_gpu: bool) -> int:
        """Processes per job: for a per-GPU stage (train), ``cluster.tasks_per_node`` or one per GPU; else one."""
        if not per_gpu:
            return 1
        if getattr(self.cluster, "tasks_per_node", None):
            return int(self.cluster.tasks_per_node)
        return max(1, self.gpus())

    def submit(
        self,
        reduce_task: ReduceTask,
        task_fn: Callable[[ShardTask], dict[str, Any]],
        tasks: Sequence[ShardTask],
        reduce_fn: Callable[[ReduceTask], dict[str, Any]],
        *,
        per_gpu: bool = False,
        after: Sequence[submitit.Job] = (),
    ) -> tuple[list[submitit.Job], submitit.Job]:
        """The step's array (``tasks``), then its reducer (``reduce_fn(reduce_task)``); both after ``after``
        (the previous step of a chain). Returns the jobs and records them in launch/."""
        where = reduce_task.where
        name = job_name(where, self.run.run_id)
        jobs: list[submitit.Job] = []
        if tasks:
            executor = self.executor(name, self.cluster.timeout_min, self.processes(per_gpu), self.gpus())
            self.order_after(executor, after)
            with scheduler_refusal(f"{where} array"):
                jobs = self.submit_array(executor, task_fn, tasks, per_gpu, after)
            self.submitted(jobs)
        reducer = self.executor(f"{name}-reduce", self.reduce_limit(), 1, 0)
        self.order_after(reducer, jobs or after)
        try:
            with scheduler_refusal(f"{where} reduce job"):
                reduce_job = reducer.submit(ReduceJob(reduce_fn, self.gate([*after, *jobs], array=False)), reduce_task)
        except SubmissionRefused:
            self.withdraw(jobs)
            raise
        self.submitted([reduce_job])  # before the next step of a chain, as its jobs come after it
        self._record(where, name, tasks, jobs, reduce_job)
        return jobs, reduce_job

    def submit_summary(self, fn: Callable[[ReduceTask], dict[str, Any]], task: ReduceTask, after: Sequence[submitit.Job]) -> submitit.Job:
        """The last job of a chain, ``fn(task)``: after everything, whatever its outcome."""
        name = job_name("summary", self.run.run_id)
        executor = self.executor(name, self.reduce_limit(), 1, 0)
        self.order_after(executor, after)
        with scheduler_refusal("summary job"):
            job = executor.submit(ReduceJob(fn, self.gate(after, array=False)), task)
        self.submitted([job])
        self._record("summary", name, [], [], job)
        return job

    def _record(self, where: str, name: str, tasks: Sequence[ShardTask], jobs: Sequence[submitit.Job], reduce_job: submitit.Job) -> None:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "stage": where,
            "cluster": self.kind,
            "name": name,
            "shards": {t.unit.label: j.job_id for t, j in zip(tasks, jobs)},
            "reduce": reduce_job.job_id,
            **self.recorded([*jobs, reduce_job]),
        }
        append_line(self.run.launch_dir / JOBS_FILE, json.dumps(entry))


# What every recorded submission holds (what status and cancel read).
_ENTRY_KEYS = {"stage": str, "cluster": str, "shards": dict, "reduce": str}


def read_submissions(run: Run) -> tuple[list[dict[str, Any]], list[str]]:
    """Every submission recorded for a run, oldest first, and a line for each record that could not be
    read (a torn or garbled line, the file replaced by a folder): skipped, so that status and cancel still
    see every job they can, and say what they could not."""
    path = run.launch_dir / JOBS_FILE
    if not path.exists():
        return [], []
    try:
        data = path.read_bytes()
    except OSError as err:
        return [], [f"{path}: cannot read the run's job list ({err.strerror}); its jobs are not shown or cancelled here; "
                    "move it away (scancel or kill them by hand)"]
    entries, problems = [], []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
            ok = (isinstance(entry, dict) and all(isinstance(entry.get(k), t) for k, t in _ENTRY_KEYS.items())
                  and isinstance(entry.get("started", {}), dict))
        except ValueError:
            ok = False
        if ok:
            entries.append(entry)
        else:
            problems.append(f"{path}:{number}: not a job record (a write cut short?); skipped: its jobs are not shown or "
                            "cancelled here; delete that line")
    return entries, problems


def job_ids(subs: Sequence[dict[str, Any]]) -> list[str]:
    """Every job id the submissions recorded (each shard's and each reducer's), once, oldest first."""
    return list(dict.fromkeys(j for sub in subs for j in (*sub["shards"].values(), sub["reduce"])))


def ended_state(shot: dict[str, Any] | None) -> str:
    """An ended job's state as its progress file says it, in sacct's words: COMPLETED, FAILED, CANCELLED (a
    task that says it was cancelled), else ENDED. For a backend whose jobs leave no record of their own."""
    if shot is not None and shot["state"] == "done":
        return "COMPLETED"
    if shot is not None and shot["state"] == "failed":
        return "CANCELLED" if shot.get("note", "").startswith(CANCELLED) else "FAILED"
    return "ENDED"


def submissions(run: Run) -> list[dict[str, Any]]:
    """Every readable submission recorded for a run, oldest first."""
    return read_submissions(run)[0]

"""The debug backend: everything runs in this process, in order, as it is submitted (submitit's debug
executor runs a job when its result is asked for, so each is asked at once).

submitit's own debug job opens ``pdb.post_mortem`` when a job raises: on a terminal the submitter would
wait at a ``(Pdb)`` prompt, and with piped stdin pdb would read the rest of the shell's input as commands.
Its jobs here raise as any job does instead (each task's log holds the traceback), once: asking again for
the result of a job that failed gives the same error, without running it a second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Sequence

import submitit
from submitit.core.utils import DelayedSubmission
from submitit.local.debug import DebugExecutor, DebugJob

from pipeline.launch.base import BackendSettings, Key, Launcher, ended_state
from pipeline.runs import Run
from pipeline.settings import knob


@dataclass(frozen=True)
class DebugSettings(BackendSettings):
    """submitit's debug executor: every task runs in the submitting process, one after the other."""

    kind: str = knob("debug", "The backend: cluster=NAME picks it, with its settings. Handy under a debugger; "
                              "implies wait=true.")
    cpus_per_task: int | None = knob(None, "Torch threads; null: all of this machine's cores.", minimum=1)


class QuietDebugJob(DebugJob):
    """A debug job that runs once and raises its error, with no debugger."""

    def __init__(self, folder: Path, submission: DelayedSubmission) -> None:
        super().__init__(folder, submission)
        self._error: Exception | None = None

    def results(self) -> List[Any]:
        self._check_not_cancelled()
        if self._submission.done():
            return [self._submission._result]
        if self._error is not None:
            raise self._error
        try:
            return [self._submission.result()]
        except Exception as err:  # noqa: BLE001 - kept, and raised to whoever asks
            self._error = err
            raise


class QuietDebugExecutor(DebugExecutor):
    """submitit's debug executor, making :class:`QuietDebugJob` s."""

    def _internal_process_submissions(self, delayed_submissions: List[DelayedSubmission]) -> List[submitit.Job[Any]]:
        return [QuietDebugJob(self.folder, ds) for ds in delayed_submissions]


class DebugLauncher(Launcher):
    """cluster=debug."""

    kind = "debug"
    settings = DebugSettings
    runs_at_once = True

    def executor(self, name: str, timeout_min: int, processes: int, gpus: int) -> submitit.Executor:
        return QuietDebugExecutor(folder=self.run.launch_dir)

    def processes(self, per_gpu: bool) -> int:
        return 1

    def submitted(self, jobs: Sequence[submitit.Job]) -> None:
        """Run them now; a failed shard must not stop the reducer (it reports incomplete shards; the error
        is in the task log)."""
        for job in jobs:
            try:
                job.result()
            except Exception:  # noqa: BLE001 - the reducer reports it
                pass

    @classmethod
    def job_states(cls, run: Run, subs: Sequence[dict[str, Any]], jobs: Mapping[Key, str],
                   shots: Mapping[Key, dict[str, Any] | None]) -> dict[Key, str]:
        """Its jobs ran inside the submitter and left no record but their progress files."""
        return {key: ended_state(shots.get(key)) for key in jobs}

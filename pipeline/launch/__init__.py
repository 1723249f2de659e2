"""Submitting a run's jobs through submitit: one small launcher per backend over a shared core (``base``).

``launcher_for(config, run)`` picks the backend of ``cluster.kind``; ``backend(kind)`` the one a run's jobs
were submitted through, which the status and cancel commands ask about them. A new backend is one module here
with a ``Launcher`` subclass and its settings (``cluster.*``: a ``BackendSettings`` subclass), and its name in
``LAUNCHERS``: ``cluster=<name>`` then picks it, with its settings' defaults.
"""

from __future__ import annotations

from pipeline.launch.base import JOBS_FILE, BackendSettings, Launcher, SubmissionRefused, job_name, read_submissions, submissions
from pipeline.launch.debug import DebugLauncher
from pipeline.launch.local import LocalLauncher
from pipeline.launch.slurm import SlurmLauncher
from pipeline.run_config import RunConfig
from pipeline.runs import Run

LAUNCHERS: dict[str, type[Launcher]] = {launcher.kind: launcher for launcher in (LocalLauncher, DebugLauncher, SlurmLauncher)}

__all__ = ["JOBS_FILE", "LAUNCHERS", "BackendSettings", "Launcher", "SubmissionRefused", "backend", "job_name", "launcher_for",
           "read_submissions", "submissions"]


def launcher_for(config: RunConfig, run: Run) -> Launcher:
    """The launcher of the config's backend."""
    return LAUNCHERS[config.cluster.kind](config, run)


def backend(kind: str) -> type[Launcher]:
    """The backend a run's jobs were submitted through (``cluster`` in its job list); for a name no backend
    has (a hand-edited list), the base, which knows no state and cancels nothing."""
    return LAUNCHERS.get(kind, Launcher)

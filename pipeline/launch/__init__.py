"""Submitting a run's jobs through submitit: one small launcher per backend over a shared core (``base``).

``launcher_for(cfg, run)`` picks the backend of ``cluster.kind``; ``backend(kind)`` the one a run's jobs were
submitted through, which the status and cancel commands ask about them. A new backend is one module here
with a ``Launcher`` subclass, and its name in ``LAUNCHERS`` and in ``config.CLUSTER_KINDS``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.launch.base import JOBS_FILE, Launcher, SubmissionRefused, job_name, read_submissions, submissions
from pipeline.launch.debug import DebugLauncher
from pipeline.launch.local import LocalLauncher
from pipeline.launch.slurm import SlurmLauncher
from pipeline.runs import Run

LAUNCHERS: dict[str, type[Launcher]] = {"local": LocalLauncher, "slurm": SlurmLauncher, "debug": DebugLauncher}

__all__ = ["JOBS_FILE", "LAUNCHERS", "Launcher", "SubmissionRefused", "backend", "job_name", "launcher_for", "read_submissions",
           "submissions"]


def launcher_for(cfg: DictConfig, run: Run) -> Launcher:
    """The launcher of the config's backend."""
    return LAUNCHERS[cfg.cluster.kind](cfg, run)


def backend(kind: str) -> type[Launcher]:
    """The backend a run's jobs were submitted through (``cluster`` in its job list); for a name no backend
    has (a hand-edited list), the base, which knows no state and cancels nothing."""
    return LAUNCHERS.get(kind, Launcher)

"""Submitting a run's jobs through submitit: one small launcher per backend over a shared core (``base``).

``launcher_for(cfg, run)`` picks the backend of ``cluster.kind``. A new backend is one module here with a
``Launcher`` subclass, and its name in ``LAUNCHERS`` and in ``config.CLUSTER_KINDS``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.launch.base import JOBS_FILE, Launcher, SubmissionRefused, job_name, read_submissions, submissions
from pipeline.launch.debug import DebugLauncher
from pipeline.launch.local import LocalLauncher
from pipeline.launch.slurm import SlurmLauncher
from pipeline.runs import Run

LAUNCHERS: dict[str, type[Launcher]] = {"local": LocalLauncher, "slurm": SlurmLauncher, "debug": DebugLauncher}

__all__ = ["JOBS_FILE", "LAUNCHERS", "Launcher", "SubmissionRefused", "job_name", "launcher_for", "read_submissions", "submissions"]


def launcher_for(cfg: DictConfig, run: Run) -> Launcher:
    """The launcher of the config's backend."""
    return LAUNCHERS[cfg.cluster.kind](cfg, run)

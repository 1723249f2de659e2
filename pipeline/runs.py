"""The run folder: ``results/<run_id>/`` holds the resolved config, what was submitted, logs, shards, tables.

A run folder explains itself, and it is also how a run is resumed: submitting again with the same run_id
reuses the folder, and only the settings that change results must match the first submission.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.config import ConfigError, project_path, to_yaml

# Settings that decide a run's results: a resubmission with other values would mix two experiments.
STAGE_CONFIG = "stage.yaml"
RESULT_KEYS = ("stage", "data", "limit", "shards", "seed", "models", "debate", "tasks", "eval", "train")


@dataclass(frozen=True)
class Run:
    """Paths of one run; every stage and tool derives its files from here."""

    root: Path

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def launch_dir(self) -> Path:
        return self.root / "launch"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def saved_config(self) -> DictConfig:
        return OmegaConf.load(self.config_path)

    def saved_config_container(self) -> dict[str, Any]:
        """The config the run was created with, as plain data (what tasks and reducers read)."""
        return OmegaConf.to_container(self.saved_config(), resolve=True)

    def stage_config(self, where: str) -> dict[str, Any]:
        """The config one stage of the run was submitted with: ``<where>/stage.yaml`` when a chain
        (``stage=all``) gave the stage its own settings, else the run's config."""
        path = self.stage_dir(where) / STAGE_CONFIG
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True) if path.exists() else self.saved_config_container()


def new_run_id() -> str:
    """Sortable by time, unique enough for concurrent submits: ``20261124-153012-a3f9``."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def adopt_saved(cfg: DictConfig, overridden: set[str]) -> None:
    """Resuming ``run_id=<id>``: result settings not given again on the command line (``overridden`` holds
    the top-level names that were) come from the run's saved config, so the id alone resumes a run."""
    if cfg.run_id is None:
        return
    path = project_path(cfg.results_dir) / str(cfg.run_id) / "config.yaml"
    if not path.exists():
        return
    saved = OmegaConf.load(path)
    for key in RESULT_KEYS:
        if key not in overridden and key in saved:
            cfg[key] = saved[key]


def open_run(cfg: DictConfig) -> tuple[Run, bool]:
    """Creates the run folder (new run) or checks a resubmission against the saved config (resume).

    Returns the run and whether it already existed. Sets ``cfg.run_id`` for a new run.
    """
    results = project_path(cfg.results_dir)
    if cfg.run_id is None:
        cfg.run_id = new_run_id()
    run = Run(results / str(cfg.run_id))
    existed = run.config_path.exists()
    if existed:
        _check_resume(cfg, run.saved_config(), run)
    else:
        try:
            for folder in (run.root, run.launch_dir, run.logs_dir):
                folder.mkdir(parents=True, exist_ok=True)
            run.config_path.write_text(to_yaml(cfg), encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"results_dir={cfg.results_dir}: cannot write the run folder {run.root} ({err.strerror})") from None
    if not os.access(run.root, os.W_OK):
        raise ConfigError(f"results_dir={cfg.results_dir}: the run folder {run.root} is read-only")
    return run, existed


def _check_resume(cfg: DictConfig, saved: DictConfig, run: Run) -> None:
    for key in RESULT_KEYS:
        new: Any = OmegaConf.to_container(cfg, resolve=True).get(key)
        old: Any = OmegaConf.to_container(saved, resolve=True).get(key)
        if new != old:
            shown = old if not isinstance(old, dict) else "the values in its config.yaml"
            raise ConfigError(
                f"run {run.run_id} was made with {key}={shown}; resume it with the same {key} (see {run.config_path})"
            )

"""The run folder: ``results/<run_id>/`` holds the resolved config, what was submitted, logs, shards, tables.

A run folder explains itself, and it is also how a run is resumed: submitting again with the same run_id
reuses the folder, and only the settings that change results must match the first submission. Which those
are, each setting says (``results=False`` on its ``knob()``, or ``run_only_when``: run-only only in a
batch-invariant run): the caller hands in the others as ``run_only``.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import DictConfig, OmegaConf

from pipeline.config import ConfigError, project_path, show_scalar, to_yaml
from pipeline.run_config import RunConfig

STAGE_CONFIG = "stage.yaml"


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

    def progress_path(self, where: str, label: str) -> Path:
        """Where a task of a stage says what it is doing (``pipeline.progress``); ``_reduce`` is the reducer's."""
        return self.root / "progress" / where / f"{label}.json"

    def saved_config(self) -> DictConfig:
        """The run's ``config.yaml``; one that is empty, does not parse or names no stage is a ConfigError
        naming the file (a damaged run folder is the user's to fix, not a traceback)."""
        return load_saved(self.config_path)

    def saved_config_container(self) -> dict[str, Any]:
        """The config the run was created with, as plain data (what tasks and reducers read)."""
        return OmegaConf.to_container(self.saved_config(), resolve=True)

    def stage_config(self, where: str) -> dict[str, Any]:
        """The config one stage of the run was submitted with: ``<where>/stage.yaml`` when a chain
        (``stage=all``) gave the stage its own settings, else the run's config."""
        path = self.stage_dir(where) / STAGE_CONFIG
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True) if path.exists() else self.saved_config_container()


def load_saved(path: Path) -> DictConfig:
    """A saved run config, checked enough to be used: a mapping that names its stage and its backend."""
    try:
        saved = OmegaConf.load(path)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the run's config ({err.strerror})") from None
    except Exception as err:  # yaml's and OmegaConf's parse errors have no common base but Exception
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path}: the run's config does not parse ({first}); restore it or start a new run") from None
    if not isinstance(saved, DictConfig) or "stage" not in saved:
        raise ConfigError(f"{path}: the run's config is empty or not a config (no 'stage'); restore it or start a new run")
    if not isinstance(OmegaConf.select(saved, "cluster.kind"), str):
        raise ConfigError(f"{path}: the run's config names no backend (cluster.kind); restore it or start a new run")
    return saved


def new_run_id() -> str:
    """Sortable by time, unique enough for concurrent submits: ``20261124-153012-a3f9``."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def saved_cluster(cfg: DictConfig, given: set[str]) -> str | None:
    """Resuming ``run_id=<id>`` without ``cluster=``: the backend the run was made with, when it is not the
    one composed now (a debug run resumes in the debug backend, a SLURM run on SLURM); else None."""
    if cfg.run_id is None or "cluster" in given:
        return None
    path = project_path(cfg.results_dir) / str(cfg.run_id) / "config.yaml"
    if not path.exists():
        return None
    kind = OmegaConf.select(load_saved(path), "cluster.kind")
    return str(kind) if kind is not None and kind != cfg.cluster.kind else None


def adopt_saved(cfg: DictConfig, given: set[str], run_only: frozenset[str]) -> None:
    """Resuming ``run_id=<id>``: every section with a result setting (a top-level key not in ``run_only``)
    not given again on the command line (``given`` holds the dotted keys that were) comes from the run's
    saved config, leaf by leaf, so the id alone resumes a run, and a default changed since the run was made
    does not count as a difference. So do the backend's settings (``cluster.*``) when the backend is the
    run's (:func:`saved_cluster`)."""
    if cfg.run_id is None:
        return
    path = project_path(cfg.results_dir) / str(cfg.run_id) / "config.yaml"
    if not path.exists():
        return
    saved = load_saved(path)
    same_backend = OmegaConf.select(saved, "cluster.kind") == cfg.cluster.kind
    results = [key for key in saved if key not in run_only]
    for key in (*results, *(("cluster",) if same_backend else ())):
        if key not in saved or key in given:
            continue
        merged = OmegaConf.create({key: saved[key]})
        for dotted in sorted(g for g in given if g.startswith(key + ".")):
            OmegaConf.update(merged, dotted, OmegaConf.select(cfg, dotted), merge=False, force_add=True)
        cfg[key] = merged[key]


def check_run_id(cfg: DictConfig, given: set[str]) -> None:
    """``run_id=<id>`` without a run folder behind it: a mistyped resume would silently start the default
    run, so a new run under a chosen id must name its stage; a folder whose config.yaml is gone but whose
    shards are there is refused, since nothing would then stop records of other settings joining them."""
    if cfg.run_id is None:
        return
    results = project_path(cfg.results_dir)
    run = Run(results / str(cfg.run_id))
    if run.config_path.exists():
        return
    if run.root.is_dir() and any(shard.stat().st_size > 0 for shard in run.root.glob("**/shard-*.jsonl")):
        raise ConfigError(f"run {run.run_id}: its config.yaml is missing but its shards are there ({run.root}); restore "
                          "config.yaml, or move the folder away to start again")
    if "stage" not in given:
        runs = sorted(p.parent.name for p in results.glob("*/config.yaml"))
        known = f"runs in {results}: {', '.join(runs[:10])}{', ...' if len(runs) > 10 else ''}" if runs else f"no runs in {results}"
        raise ConfigError(f"run_id={cfg.run_id}: no such run ({known}); to start a new run with this id, name its stage, "
                          f"e.g. stage={cfg.stage} run_id={cfg.run_id}")


def check_free_space(config: RunConfig) -> None:
    """Refuses a submission whose results folder's file system is nearly full (``paths.min_free_mib``): past
    that point submitit's own files and the task logs would be the first to fail, before any shard could say so."""
    folder = project_path(config.results_dir)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except OSError:
        return
    free = stats.f_bavail * stats.f_frsize / 2**20
    if free < config.paths.min_free_mib:
        raise ConfigError(f"results_dir={config.results_dir}: {free:.0f} MiB free on its file system, below paths.min_free_mib="
                          f"{config.paths.min_free_mib}; free some space (or lower paths.min_free_mib)")


def open_run(config: RunConfig, run_only: frozenset[str], run_only_when: Mapping[str, str],
             complete: Callable[[dict[str, Any]], dict[str, Any]]) -> tuple[RunConfig, Run, bool]:
    """Creates the run folder (new run) or checks a resubmission against the saved config (resume); the
    dotted keys in ``run_only`` (settings that cannot change a result in this run) may differ. A refused key
    that is run-only only where a switch is true (``run_only_when``: ``debate.batch_size`` with
    ``debate.batch_invariant``) says so. ``complete`` gives a saved config the keys it lacks (settings added
    since the run was made) at the values such a run had, as the resumed config has them.

    Returns the config with its run id (a new run's is picked here, with its folder), the run and whether it
    already existed.
    """
    check_free_space(config)
    run = Run(project_path(config.results_dir) / str(config.run_id if config.run_id is not None else new_run_id()))
    config = dataclasses.replace(config, run_id=run.run_id)
    existed = run.config_path.exists() or not _create_config(config, run)
    if existed:
        _check_resume(config, complete(run.saved_config_container()), run, run_only, run_only_when)
    if not os.access(run.root, os.W_OK):
        raise ConfigError(f"results_dir={config.results_dir}: the run folder {run.root} is read-only")
    return config, run, existed


def _create_config(config: RunConfig, run: Run) -> bool:
    """Writes a new run's config.yaml (the typed config, once, for people), whole, only if there is none:
    written beside it, then hard-linked into place, which fails when another submission got there first. Of
    two submissions of one new run id at the same moment, one creates the run and the other is checked
    against it as a resume. False when the config was already there."""
    try:
        for folder in (run.root, run.launch_dir, run.logs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".config.yaml.", suffix=".tmp", dir=run.root)
        tmp = Path(name)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(to_yaml(config.plain()))
        try:
            os.link(tmp, run.config_path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
    except OSError as err:
        raise ConfigError(f"results_dir={config.results_dir}: cannot write the run folder {run.root} ({err.strerror})") from None


def _first_difference(new: Any, old: Any, where: str, skip: frozenset[str] = frozenset()) -> tuple[str, Any, Any] | None:
    """The first dotted key (not in ``skip``) at which two config values differ, with both values."""
    if where in skip:
        return None
    if isinstance(new, dict) and isinstance(old, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            found = _first_difference(new.get(key), old.get(key), f"{where}.{key}" if where else str(key), skip)
            if found:
                return found
        return None
    return None if new == old else (where, new, old)


def _check_resume(config: RunConfig, saved: dict[str, Any], run: Run, run_only: frozenset[str], run_only_when: Mapping[str, str]) -> None:
    found = _first_difference(config.plain(), saved, "", run_only)
    if found:
        where, new, old = found
        switch = run_only_when.get(where)
        unless = f"; {where} changes results unless the run was made with {switch}=true, which makes it run-only" if switch else ""
        raise ConfigError(
            f"run {run.run_id} was made with {where}={_shown(old)} (this submission: {_shown(new)}); resume it with "
            f"the same {where}, or leave it out (see {run.config_path}){unless}"
        )


def _shown(value: Any) -> str:
    """A config value for a one-line message: as typed, a long or multi-line text cut short."""
    text = show_scalar(value)
    return text if len(text) <= 60 and "\n" not in text else text.replace("\n", " ")[:57] + "..."

"""What a stage is, as the rest of the suite sees it: one object per stage (``debate.STAGE``,
``harness.STAGE``, ``train.STAGE``) naming its settings and checks, the models it loads and what it asks
of them, its units, its task, its reducer, its progress, its record schema and its output files. The
submitter, the status command, the run README and ``--help`` talk to that object, never to a stage's
internals, and never name a stage.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from pipeline.config import ConfigError
from pipeline.run_config import RunConfig
from pipeline.settings import PAIR
from pipeline.shards import RecordSchema, Unit, check_files, read_shard


def records_progress(stage_dir: Path, unit: Unit) -> tuple[int, int]:
    """A sharded stage's progress: records in the shard file / records the shard owns."""
    return len(read_shard(unit.path(stage_dir))), len(unit.indices)


@dataclass(frozen=True)
class Stage:
    """A stage: its units (array items), the task callable, the reducer and its main table.

    The task and the reducer are named (``module:function``) and imported when a job is submitted: they
    pull in torch, transformers or lm-eval, which the status command and a refused submission never need.
    """

    name: str
    # Its keys' checks (``debate.*``, ``eval.*``, ``train.*``): run before anything is submitted.
    check: Callable[[DictConfig], None]
    units: Callable[[RunConfig], list[Unit]]
    task: str
    reducer: str
    # The reducer's main table and its plots, as names with ``{where}`` (the reducer's own constants).
    table: str
    plots: tuple[str, ...]
    # What the stage's work is counted in (status, progress): problems, samples, steps.
    what: str
    progress: Callable[[Path, Unit], tuple[int, int]] = records_progress
    # One process per GPU (the train stage); the sharded stages run one process per array task.
    per_gpu: bool = False
    # What a unit's records must hold (sharded stages): their keys and the fingerprint of their settings.
    schema: Callable[[RunConfig, Unit], RecordSchema] | None = None
    # Its section of the config (``<name>.*``): the typed settings dataclass (``pipeline.settings``), whose
    # fields say which keys change results.
    settings: type | None = None
    # The models of the pair it loads (``a``, ``b``), from its config.
    models: Callable[[RunConfig], list[str]] = lambda config: list(PAIR)
    # Its keys (dotted) that count tokens one sequence of a model holds: each below the model's context.
    token_keys: tuple[str, ...] = ()
    # What else it asks of a model whose folder is here, given the tokens the model holds (the debate's first
    # prompt must fit): (config, model key, folder, context) -> raises ConfigError.
    check_model: Callable[[RunConfig, str, Path, int], None] | None = None
    # What it checks once the models are prepared (the training set, the layers LoRA adapts):
    # (config, model folders by key) -> raises ConfigError.
    check_models: Callable[[RunConfig, dict[str, Path]], None] | None = None
    # Its work in its own units, for the submitter's first line: (config, problems) -> text.
    describe: Callable[[RunConfig, int], str] = lambda config, problems: f"{problems} problems, {config.shards} shard(s)"

    def work_done(self, config: RunConfig, stage_dir: Path, units: list[Unit]) -> dict[Unit, tuple[int, int]]:
        """Each unit's work done / total. A sharded stage's files are read once, and must all be this run's
        (its schema) and readable: a ConfigError names the first that is not."""
        if self.progress is not records_progress:
            return {unit: self.progress(stage_dir, unit) for unit in units}
        schema = self.schema
        try:
            checks = check_files(stage_dir, units, (lambda unit: schema(config, unit)) if schema else None)[1]
        except ValueError as err:
            raise ConfigError(str(err)) from None
        corrupt = [c.error for c in checks if c.error]
        if corrupt:
            raise ConfigError(corrupt[0])
        return {c.unit: (c.done, c.expected) for c in checks}

    def table_file(self, where: str) -> str:
        return self.table.format(where=where)

    def plot_files(self, where: str) -> list[str]:
        return [plot.format(where=where) for plot in self.plots]

    @property
    def run_task(self) -> Callable[..., dict[str, Any]]:
        """The callable one array task runs (imported now)."""
        return _named(self.task)

    @property
    def reduce(self) -> Callable[..., dict[str, Any]]:
        """The reducer's callable (imported now), called with its ``ReduceTask``."""
        return _named(self.reducer)


def _named(name: str) -> Callable[..., Any]:
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)

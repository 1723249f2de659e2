"""The stages of the suite, by name: what their array is, what a task runs, what merges the results.

The submitter, the status command and ``stage=all`` see a stage only through this table, so a stage is
added in one place. A stage runs in a folder of the run (``where``): its own name, except in a
``stage=all`` chain, where the eval stage runs twice (``eval`` and ``eval_finetuned``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from pipeline.config import load_config
from pipeline.debate.checks import check_debate
from pipeline.debate.units import debate_schema, debate_units
from pipeline.harness.checks import check_eval
from pipeline.harness.units import eval_schema, eval_units
from pipeline.reduce import debate as debate_outputs, eval as eval_outputs, train as train_outputs
from pipeline.shards import RecordSchema, Unit, read_shard
from pipeline.train.checks import check_train
from pipeline.train.units import train_progress, train_units


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
    units: Callable[[dict[str, Any]], list[Unit]]
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
    schema: Callable[[dict[str, Any], Unit], RecordSchema] | None = None

    def table_file(self, where: str) -> str:
        return self.table.format(where=where)

    def plot_files(self, where: str) -> list[str]:
        return [plot.format(where=where) for plot in self.plots]

    @property
    def run_task(self) -> Callable[..., dict[str, Any]]:
        """The callable one array task runs (imported now)."""
        return _named(self.task)

    @property
    def reduce(self) -> Callable[[str, str], dict[str, Any]]:
        """The reducer's callable (imported now)."""
        return _named(self.reducer)


def _named(name: str) -> Callable[..., Any]:
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


STAGES: dict[str, Stage] = {
    "debate": Stage("debate", check_debate, debate_units, "pipeline.debate.shard:run_debate_shard", "pipeline.reduce.debate:reduce_debate",
                    debate_outputs.TABLE, debate_outputs.PLOTS, "problems", schema=debate_schema),
    "eval": Stage("eval", check_eval, eval_units, "pipeline.harness.shard:run_eval_shard", "pipeline.reduce.eval:reduce_eval",
                  eval_outputs.TABLE, eval_outputs.PLOTS, "samples", schema=eval_schema),
    "train": Stage("train", check_train, train_units, "pipeline.train.job:run_train", "pipeline.reduce.train:reduce_train",
                   train_outputs.TABLE, train_outputs.PLOTS, "steps", train_progress, per_gpu=True),
}

# stage=all: (folder, stage) in order; each step starts after the one before it has ended.
CHAIN = (("eval", "eval"), ("train", "train"), ("eval_finetuned", "eval"), ("debate", "debate"))


def checked_config(overrides: list[str]) -> DictConfig:
    """The config with the overrides, its common keys checked (``load_config``) and then the keys of every
    stage it runs (``stage=all``: all three), each by its own stage."""
    cfg = load_config(overrides)
    kinds = dict.fromkeys(kind for _, kind in CHAIN) if cfg.stage == "all" else (cfg.stage,)
    for kind in kinds:
        STAGES[kind].check(cfg)
    return cfg

"""What a stage is, as the rest of the suite sees it: one object per stage (``debate.STAGE``,
``harness.STAGE``, ``train.STAGE``) naming its checks, its units, its task, its reducer, its progress,
its record schema and its output files. The submitter, the status command, the run README and ``--help``
talk to that object, never to a stage's internals.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from pipeline.shards import RecordSchema, Unit, read_shard


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
    # Its section of the config (``<name>.*``): the typed settings dataclass (``pipeline.settings``).
    settings: type | None = None
    # Its keys (dotted) that change how the work runs, not what a record holds (outside the schema's
    # fingerprint): a resume may give them other values (a smaller batch after running out of memory).
    run_only: tuple[str, ...] = ()

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

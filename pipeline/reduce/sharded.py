"""The skeleton every sharded step's reducer shares (debate, eval): read and check the shards
(``collect.begin_reduce``), let the stage make its numbers, table, outcomes and figures of the records
(its ``merge``), then write the step's files in one order: the JSON, the CSV, the outcomes, the table, the
plots, the page, then wandb and what only a complete step does. A stage says what its files hold; when and
in which order they are written, and what an incomplete or empty step says, is decided here once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from pipeline.files import write_atomic
from pipeline.jobs import ReduceTask
from pipeline.models.registry import model_label
from pipeline.reduce.collect import begin_reduce, incomplete_note
from pipeline.reduce.figures import save_figure
from pipeline.reduce.outcomes import Outcomes, to_csv
from pipeline.reduce.report import Questions, write_report
from pipeline.reduce.tables import rows_csv
from pipeline.reduce.wandb_log import log_step
from pipeline.run_config import RunConfig
from pipeline.runs import Run
from pipeline.shards import ShardCheck
from pipeline.stage import Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepRecords:
    """What a stage's merge reads: the step (its run, ``where`` and config), its records by part, how far each
    shard got, and ``labels``, each model's display name by its key in the pair (made once, here: every
    table, figure, outcome column and transcript names a model alike)."""

    run: Run
    where: str
    config: RunConfig
    by_part: dict[str, list[dict[str, Any]]]
    checks: list[ShardCheck]
    labels: dict[str, str]


@dataclass(frozen=True)
class Merged:
    """What a stage makes of its records: what each of the step's files holds."""

    # ``<where>_accuracy.json``, before the shards' state (``complete``, ``shards``) is added.
    numbers: dict[str, Any]
    # ``<where>_accuracy.csv``.
    rows: list[dict[str, Any]]
    # ``<where>_accuracy.md`` (and the page's table), before an incomplete step's note is added.
    table: str
    # ``<where>_outcomes.csv`` and the page's question browser.
    outcomes: Outcomes
    questions: Questions
    # One per plot the stage names (``Stage.plots``), drawn only when written; None: this step has no such plot.
    figures: tuple[Callable[[], Any] | None, ...]
    # The tables wandb logs, and a per-round curve (a debate's).
    logged: dict[str, list[dict[str, Any]]]
    rounds: list[dict[str, Any]] | None = None
    # What only a complete step does (a debate's transcript log), returning keys for the result.
    when_complete: Callable[[], dict[str, Any]] | None = None
    # More keys for the result, after the table.
    result: dict[str, Any] = field(default_factory=dict)


def model_labels(config: RunConfig) -> dict[str, str]:
    """Each model's display name, by its key in the pair."""
    return {key: model_label(getattr(config.models, key), config.results_dir) for key in ("a", "b")}


def reduce_sharded(task: ReduceTask, stage: Stage, noun: str, merge: Callable[[StepRecords], Merged | None]) -> dict[str, Any]:
    """Reduces the step the task names, with the config it carries; ``merge`` makes the stage's files of its
    records (None: no record finished yet). ``noun`` counts the records (``problems``) in the lines people
    read. Returns what ``begin_reduce`` reports with the ``table``, and the merge's own keys."""
    run, where, config = task.run, task.where, task.config
    schema = stage.schema
    by_part, checks, result = begin_reduce(task, stage.units(config), noun,
                                           (lambda unit: schema(config, unit)) if schema is not None else None)
    if "table" in result:
        return result
    merged = merge(StepRecords(run, where, config, by_part, checks, model_labels(config)))
    if merged is None:
        result["table"] = f"run {run.run_id}: no finished {noun} yet; resume with: {result['resume']}\n"
        return result
    table = merged.table + ("" if result["complete"] else incomplete_note(checks, result["resume"]))
    write_atomic(run.root / f"{where}_accuracy.json",
                 json.dumps({**merged.numbers, "complete": result["complete"], "shards": result["shards"]}, indent=2) + "\n")
    write_atomic(run.root / f"{where}_accuracy.csv", rows_csv(merged.rows))
    write_atomic(run.root / f"{where}_outcomes.csv", to_csv(merged.outcomes))
    write_atomic(run.root / stage.table_file(where), table)
    plots = stage.plot_files(where)
    for plot, draw in zip(plots, merged.figures):
        if draw is not None:
            save_figure(draw(), run.root / plot)
    write_report(task, table, plots, merged.questions)
    log_step(run, where, config, merged.logged, [run.root / p for p in plots], result["complete"], rounds=merged.rounds)
    if result["complete"] and merged.when_complete is not None:
        result.update(merged.when_complete())
    result["table"] = table
    result.update(merged.result)
    log.info("reduced %d %s of run %s (complete: %s)", sum(c.done for c in checks), noun, run.run_id, result["complete"])
    return result

"""The eval reducer: per-question records of every (model, task) -> ``<where>_accuracy.{md,csv,json,png}``,
``<where>_outcomes.csv`` and the report page; in a ``stage=all`` chain the fine-tuned step against the base step.

What it writes, and in which order, is the sharded reducers' skeleton (``sharded.py``); the numbers are
``eval_stats.py``'s, the table ``tables.py``'s, the plot ``figures.py``'s.
"""

from __future__ import annotations

from typing import Any

from pipeline.harness import STAGE
from pipeline.harness.settings import EvalSettings
from pipeline.harness.units import eval_schema, eval_units
from pipeline.jobs import ReduceTask
from pipeline.reduce.eval_stats import against_base, outcomes, summarize
from pipeline.reduce.figures import eval_figure
from pipeline.reduce.questions import eval_questions
from pipeline.reduce.sharded import Merged, StepRecords, reduce_sharded
from pipeline.reduce.tables import eval_table
from pipeline.run_config import load
from pipeline.runs import Run
from pipeline.shards import collect


def _base_comparison(run: Run, where: str, by_part: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """In a ``stage=all`` chain, the fine-tuned step against the base step of the same run; else nothing. The
    base step's records are read with the config they were made with: that step's saved one."""
    if where == "eval" or not run.stage_dir("eval").is_dir():
        return []
    base_config = load(run.stage_config("eval"), {"eval": EvalSettings})
    base, _ = collect(run.stage_dir("eval"), eval_units(base_config), lambda unit: eval_schema(base_config, unit))
    return against_base(by_part, base)


def _merge(step: StepRecords) -> Merged | None:
    """The eval step's files, from its records (none: no question finished yet)."""
    run, where, config = step.run, step.where, step.config
    keys, tasks = config.eval.models, config.tasks
    rows = summarize(step.by_part, step.labels, keys, tasks)
    if not rows:
        return None
    base = _base_comparison(run, where, step.by_part)
    per_question = outcomes(step.by_part, step.labels, keys, tasks, "" if where == "eval" else "fine-tuned ")
    title = (f"GSM8K accuracy{', fine-tuned models' if where != 'eval' else ''} (lm-eval, 95% CI), run {run.run_id}, "
             f"n={max(r['n'] for r in rows)}")
    return Merged(
        numbers={"rows": rows, "against_base": base},
        rows=rows,
        table=eval_table(rows, run.run_id, step.checks, where, base),
        outcomes=per_question,
        questions=eval_questions(step.by_part, config, per_question, step.labels),
        figures=(lambda: eval_figure(rows, title),),
        logged={"accuracy": rows, "against_base": base},
        result={"rows": rows},
    )


def reduce_eval(task: ReduceTask) -> dict[str, Any]:
    """Writes ``<where>_accuracy.{md,csv,json,png}`` and the report page; an incomplete run's table is marked partial.
    The task's ``where`` is ``eval`` (or ``eval_finetuned`` in a ``stage=all`` chain)."""
    return reduce_sharded(task, STAGE, "questions", _merge)

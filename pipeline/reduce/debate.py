"""The debate reducer: completeness check, accuracy tables, the per-round and vote-curve plots and the transcript log.

It runs after the array whatever the tasks' outcome. It always says which shards are missing or partial
and how to resume them; the tables of an incomplete run are marked partial and its transcripts are not
logged (the log holds each complete run exactly once). Running it again gives the same files. What it
writes, and in which order, is the sharded reducers' skeleton (``sharded.py``); the numbers are
``debate_stats.py``'s, the table ``tables.py``'s, the plots ``figures.py``'s, the log ``transcript.py``'s.
"""

from __future__ import annotations

from typing import Any

from pipeline.debate import STAGE
from pipeline.jobs import ReduceTask
from pipeline.reduce.debate_stats import outcomes, summarize
from pipeline.reduce.figures import rounds_figure, vote_curve_figure
from pipeline.reduce.questions import debate_questions
from pipeline.reduce.sharded import Merged, StepRecords, reduce_sharded
from pipeline.reduce.tables import debate_table
from pipeline.reduce.transcript import log_transcripts


def _merge(step: StepRecords) -> Merged | None:
    """The debate's files, from its records (none: no problem finished yet)."""
    records = step.by_part.get("", [])
    if not records:
        return None
    run_id, debate = step.run.run_id, step.config.debate
    summary = summarize(records, step.labels, debate)
    per_question = outcomes(records, step.labels, debate)
    return Merged(
        numbers=summary,
        rows=summary["methods"],
        table=debate_table(summary, run_id, step.checks),
        outcomes=per_question,
        questions=debate_questions(records, per_question),
        figures=(lambda: rounds_figure(summary, run_id), (lambda: vote_curve_figure(summary, run_id)) if summary["sampling"] else None),
        logged={k: summary[k] for k in ("methods", "per_round", "paired", "agreement")},
        rounds=summary["per_round"],
        when_complete=lambda: {"transcripts_appended": log_transcripts(step.config.paths.transcript_log, run_id, records, step.labels)},
    )


def reduce_debate(task: ReduceTask) -> dict[str, Any]:
    """Writes ``<where>_accuracy.{md,csv,json}``, ``<where>_outcomes.csv``, the per-round PNG, with a vote the
    vote-curve PNG, and the report page; logs transcripts once if complete."""
    return reduce_sharded(task, STAGE, "problems", _merge)

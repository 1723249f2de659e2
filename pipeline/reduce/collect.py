"""Where every reducer starts: a stage's records and how far each shard got (``pipeline.shards`` reads and
checks them), or the reason to merge nothing now. A shard that is missing, partial or corrupt is reported
with the command that resumes it, never guessed at.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.jobs import ReduceTask
from pipeline.shards import SchemaOf, ShardCheck, Unit, check_files

log = logging.getLogger(__name__)


def gather(stage_dir: Path, units: list[Unit], schema_of: SchemaOf = None) -> tuple[dict[str, list[dict[str, Any]]], list[ShardCheck], str | None]:
    """What a reducer reads: records and checks, or the reason to merge nothing now (shards still being
    written, or shard files that are not this run's)."""
    try:
        records, checks = check_files(stage_dir, units, schema_of)
    except ValueError as err:
        return {}, [], str(err)
    running = [c.unit.label for c in checks if c.running]
    if running:
        return records, checks, f"shards still running: {', '.join(running)}; nothing merged (rerun the reducer when they end)"
    return records, checks, None


def incomplete_note(checks: list[ShardCheck], resume: str) -> str:
    """The lines a partial table ends with: which shards, how far, and the command that resumes them."""
    bad = [c for c in checks if c.state != "complete"]
    shown = ", ".join(f"{c.unit.label} ({c.state}, {c.done}/{c.expected})" for c in bad)
    return f"\nIncomplete shards: {shown}.\nResume with: {resume}\n"


def begin_reduce(task: ReduceTask, units: list[Unit], noun: str, schema_of: SchemaOf = None) -> tuple[dict[str, list[dict[str, Any]]], list[ShardCheck], dict[str, Any]]:
    """The start every sharded reducer shares: records, checks, and the result it returns. The result holds
    a ``table`` already when there is nothing to merge now (shards still running, files not the run's)."""
    run = task.run
    by_part, checks, refused = gather(run.stage_dir(task.where), units, schema_of)
    incomplete = [c for c in checks if c.state != "complete"]
    result: dict[str, Any] = {
        "run_id": run.run_id,
        "complete": not refused and not incomplete,
        "shards": [c.as_dict() for c in checks],
        "resume": task.resume if incomplete else None,
    }
    if refused:
        log.error("%s", refused)
        result.update(refused=refused, table=f"run {run.run_id}: {refused}\n")
        return by_part, checks, result
    for c in incomplete:
        log.warning("%s: %s (%d/%d %s)%s", c.unit.label, c.state, c.done, c.expected, noun, f": {c.error}" if c.error else "")
    return by_part, checks, result

"""Reading a stage's shards back: every record, and how far each shard got.

Every reducer starts here. A shard that is missing, partial or corrupt is reported (with the resume
command), never guessed at; a record that does not belong to its shard (another run's file, a file of
another shard count) or a record written twice is an error naming the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.shards import RecordSchema, ShardCorruptError, Unit, read_shard, shard_in_use

SchemaOf = Callable[[Unit], RecordSchema] | None

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardCheck:
    """How far one shard got."""

    unit: Unit
    done: int
    error: str | None = None
    running: bool = False

    @property
    def expected(self) -> int:
        return len(self.unit.indices)

    @property
    def state(self) -> str:
        if self.running:
            return "running"
        if self.error:
            return "corrupt"
        return "complete" if self.done == self.expected else ("missing" if self.done == 0 else "partial")

    def as_dict(self) -> dict[str, Any]:
        return {"part": self.unit.part, "shard": self.unit.shard, "state": self.state, "done": self.done,
                "expected": self.expected, "error": self.error}


def collect(stage_dir: Path, units: list[Unit], schema_of: SchemaOf = None) -> tuple[dict[str, list[dict[str, Any]]], list[ShardCheck]]:
    """Records per part, in index order, and one check per unit. With ``schema_of``, a record that is
    incomplete or was made with other settings makes its shard corrupt (file and line named)."""
    records: dict[str, list[dict[str, Any]]] = {}
    checks: list[ShardCheck] = []
    for unit in units:
        path = unit.path(stage_dir)
        if shard_in_use(path):
            checks.append(ShardCheck(unit, len(read_shard(path)), running=True))
            continue
        try:
            found = read_shard(path, schema_of(unit) if schema_of else None)
        except ShardCorruptError as err:
            checks.append(ShardCheck(unit, 0, str(err)))
            continue
        expected = set(unit.indices)
        stray = [r["index"] for r in found if r["index"] not in expected]
        if stray:
            raise ValueError(f"{path}: holds record {stray[0]}, which is not in shard {unit.shard} of {unit.shards} (a shard of another run?)")
        if len({r["index"] for r in found}) != len(found):
            raise ValueError(f"{path}: a record is written twice")
        records.setdefault(unit.part, []).extend(found)
        checks.append(ShardCheck(unit, len(found)))
    return {part: sorted(rs, key=lambda r: r["index"]) for part, rs in records.items()}, checks


def stray_files(stage_dir: Path, units: list[Unit]) -> list[Path]:
    """Shard files in the stage's folders that no unit of this run owns: another shard count's, or files
    copied in from elsewhere. Merging around them would silently drop or mix records."""
    owned = {unit.path(stage_dir) for unit in units}
    folders = {unit.path(stage_dir).parent for unit in units}
    return sorted(p for folder in folders for p in folder.glob("shard-*.jsonl") if p not in owned)


def check_files(stage_dir: Path, units: list[Unit], schema_of: SchemaOf = None) -> tuple[dict[str, list[dict[str, Any]]], list[ShardCheck]]:
    """Records and checks, after making sure every shard file is this run's: raises ValueError naming the
    first file of another shard count in the folder, or whose records belong to other shards."""
    stray = stray_files(stage_dir, units)
    if stray:
        count = units[0].shards if units else 0
        raise ValueError(f"{stray[0]}: a shard file of another shard count or run (this run has {count} shards per part); move it away")
    return collect(stage_dir, units, schema_of)


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


def begin_reduce(run: Any, where: str, units: list[Unit], noun: str, schema_of: SchemaOf = None) -> tuple[dict[str, list[dict[str, Any]]], list[ShardCheck], dict[str, Any]]:
    """The start every sharded reducer shares: records, checks, and the result it returns. The result holds
    a ``table`` already when there is nothing to merge now (shards still running, files not the run's)."""
    by_part, checks, refused = gather(run.stage_dir(where), units, schema_of)
    incomplete = [c for c in checks if c.state != "complete"]
    result: dict[str, Any] = {
        "run_id": run.run_id,
        "complete": not refused and not incomplete,
        "shards": [c.as_dict() for c in checks],
        "resume": f"python jobs/submit.py stage={run.saved_config().stage} run_id={run.run_id}" if incomplete else None,
    }
    if refused:
        log.error("%s", refused)
        result.update(refused=refused, table=f"run {run.run_id}: {refused}\n")
        return by_part, checks, result
    for c in incomplete:
        log.warning("%s: %s (%d/%d %s)%s", c.unit.label, c.state, c.done, c.expected, noun, f": {c.error}" if c.error else "")
    return by_part, checks, result

"""Reading a stage's shards back: every record, and how far each shard got.

Every reducer starts here. A shard that is missing, partial or corrupt is reported (with the resume
command), never guessed at; a record that does not belong to its shard (another run's file, a file of
another shard count) or a record written twice is an error naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.shards import ShardCorruptError, Unit, read_shard


@dataclass(frozen=True)
class ShardCheck:
    """How far one shard got."""

    unit: Unit
    done: int
    error: str | None = None

    @property
    def expected(self) -> int:
        return len(self.unit.indices)

    @property
    def state(self) -> str:
        if self.error:
            return "corrupt"
        return "complete" if self.done == self.expected else ("missing" if self.done == 0 else "partial")

    def as_dict(self) -> dict[str, Any]:
        return {"part": self.unit.part, "shard": self.unit.shard, "state": self.state, "done": self.done,
                "expected": self.expected, "error": self.error}


def collect(stage_dir: Path, units: list[Unit]) -> tuple[dict[str, list[dict[str, Any]]], list[ShardCheck]]:
    """Records per part, in index order, and one check per unit."""
    records: dict[str, list[dict[str, Any]]] = {}
    checks: list[ShardCheck] = []
    for unit in units:
        path = unit.path(stage_dir)
        try:
            found = read_shard(path)
        except ShardCorruptError as err:
            checks.append(ShardCheck(unit, 0, str(err)))
            continue
        expected = set(unit.indices)
        stray = [r["index"] for r in found if r["index"] not in expected]
        if stray:
            raise ValueError(f"{path}: holds record {stray[0]}, which is not in shard {unit.shard} of {unit.shards}")
        if len({r["index"] for r in found}) != len(found):
            raise ValueError(f"{path}: a record is written twice")
        records.setdefault(unit.part, []).extend(found)
        checks.append(ShardCheck(unit, len(found)))
    return {part: sorted(rs, key=lambda r: r["index"]) for part, rs in records.items()}, checks


def incomplete_note(checks: list[ShardCheck], resume: str) -> str:
    """The lines a partial table ends with: which shards, how far, and the command that resumes them."""
    bad = [c for c in checks if c.state != "complete"]
    shown = ", ".join(f"{c.unit.label} ({c.state}, {c.done}/{c.expected})" for c in bad)
    return f"\nIncomplete shards: {shown}.\nResume with: {resume}\n"

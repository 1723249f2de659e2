"""GSM8K loading and the split of a run's questions into shards."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.answers import GoldAnswerError, parse_gold


@dataclass(frozen=True)
class Problem:
    """One GSM8K problem: its position in the split (the stable id used by shards), text and gold answer."""

    index: int
    question: str
    gold: str


def load_problems(path: Path, limit: int | None = None) -> list[Problem]:
    """Reads the first ``limit`` problems of a GSM8K JSONL file; a gold answer that does not parse is an error
    naming the file and line, because scoring against a wrong gold would silently corrupt every table."""
    problems: list[Problem] = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if limit is not None and len(problems) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                question, answer = row["question"], row["answer"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{line_no}: not a GSM8K record with 'question' and 'answer' ({err})") from None
            try:
                gold = parse_gold(answer)
            except GoldAnswerError as err:
                raise ValueError(f"{path}:{line_no}: {err}") from None
            problems.append(Problem(index=len(problems), question=question, gold=gold))
    if not problems:
        raise ValueError(f"{path}: no problems in the file")
    return problems


def shard_slice(total: int, shard: int, shards: int) -> range:
    """The contiguous block of problem positions that shard ``shard`` of ``shards`` owns (sizes differ by <= 1)."""
    start = shard * total // shards
    stop = (shard + 1) * total // shards
    return range(start, stop)

"""The majority vote over sampled answers: one rule shared by the engine's vote baseline and the reducer's
majority@j curve, kept apart from the engine so that the reducer reads it without loading torch."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from pipeline.answers import same_answer


def majority(answers: Sequence[str | None]) -> str | None:
    """The most frequent parsable answer; ties go to the one seen first. None when no answer parses."""
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for answer in answers:
        if answer is None:
            continue
        key = next((k for k in first if same_answer(k, answer)), answer)
        first.setdefault(key, answer)
        counts[key] += 1
    if not counts:
        return None
    best = max(counts.values())
    return next(first[k] for k in first if counts[k] == best)

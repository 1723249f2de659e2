"""Debate records for the reducers' unit tests, made the way the engine makes them: replies from texts, every
verdict derived by ``pipeline.debate.scoring.score_record``, so a test never hand-writes a derived field."""

from __future__ import annotations

from typing import Any, Sequence

from pipeline.debate.scoring import reply, score_record
from pipeline.debate.settings import DebateSettings
from pipeline.run_config import RunConfig, load


def said(answer: str | None, stopped: bool = True) -> dict[str, Any]:
    """A reply stating ``answer`` as ``#### N`` (None: a reply with no number at all)."""
    return reply(f"So it is done.\n#### {answer}" if answer is not None else "I cannot tell.", stopped, 10, 1.0)


def record(index: int, gold: str, turns: Sequence[str | None], b_solo: str | None = None,
           votes: dict[str, Sequence[str | None]] | None = None, rule: str = "last") -> dict[str, Any]:
    """A scored record whose turns state ``turns`` in order (a, b, a, ...), with model b's solo answer and
    each vote's samples when given."""
    made = [{"model": "ab"[i % 2], "name": f"m-{'ab'[i % 2]}", "round": i // 2 + 1, **said(answer)} for i, answer in enumerate(turns)]
    solo: dict[str, Any] = {"a": {}}
    if b_solo is not None:
        solo["b"] = said(b_solo)
    vote = {key: {"replies": [said(s) for s in samples], "tokens": 10 * len(samples), "seconds": 1.0 * len(samples)}
            for key, samples in (votes or {}).items()}
    return score_record({"index": index, "question": f"q{index}", "gold": gold, "turns": made, "solo": solo, "vote": vote}, rule)


def debate_config(values: dict[str, Any]) -> RunConfig:
    """A reducer's typed config from the few keys a test gives (the pair, some debate settings); every other
    key takes its default."""
    return load(values, {"debate": DebateSettings})

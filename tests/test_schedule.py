"""The debate's schedule (debate.refill): a turn takes in the shard's next problems wherever debates ended, so the
later rounds run beside the next problems' first instead of a few debates at a time; every turn holds at most
batch_size debates, each at its own round with its own seed, and the records are those of the group-by-group
schedule (here with scripted replies; with real models, bit for bit where batch invariance holds:
tests/test_invariance.py)."""

from __future__ import annotations

import pytest

from pipeline.data import Problem
from pipeline.debate import engine as debate_engine
from pipeline.debate.engine import DebateEngine
from pipeline.debate.settings import Baselines, DebateSettings
from pipeline.engine.generation import Completion
from pipeline.engine.sampling import row_seed
from tests.conftest import NamedModel

PROBLEMS = [Problem(i, f"Question {i}: how many eggs are left?", "18") for i in range(5)]
# The round in which model b first agrees with model a (who always says 18); problem 4: never (3 rounds, no agreement).
AGREES = {0: 1, 1: 3, 2: 2, 3: 1, 4: 99}


def _run(monkeypatch: pytest.MonkeyPatch, refill: bool) -> tuple[list[dict], list[list[tuple[str, int, int, int]]]]:
    """The five problems in turns of two debates; the records, and each call's rows as (model, problem, round, seed)."""
    calls: list[list[tuple[str, int, int, int]]] = []

    def generate(chat, convs, seeds, **_) -> list[Completion]:
        rows, out = [], []
        for conv, seed in zip(convs, seeds):
            index = next(p.index for p in PROBLEMS if p.question in conv[0]["content"])
            round_no = 1 + sum(m["role"] == "assistant" for m in conv)
            rows.append((chat.name, index, round_no, seed))
            says = "18" if chat.name == "A" or round_no >= AGREES[index] else "20"
            out.append(Completion(f"So the answer is\n#### {says}", 12, 0.1, True))
        calls.append(rows)
        return out

    monkeypatch.setattr(debate_engine, "generate_chat", generate)
    settings = DebateSettings(max_rounds=3, batch_size=2, refill=refill, baselines=Baselines(solo=False, vote_models=()))
    records: list[dict] = []
    DebateEngine({"a": NamedModel("A"), "b": NamedModel("B")}, settings, seed=7).run_all(PROBLEMS, records.append)
    return sorted(records, key=lambda r: r["index"]), calls


def test_refill_takes_the_next_problems_into_the_turns_where_debates_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    records, calls = _run(monkeypatch, refill=True)
    grouped, group_calls = _run(monkeypatch, refill=False)
    assert records == grouped and [r["rounds"] for r in records] == [1, 3, 2, 1, 3]
    # Problem 0 ends in round 1: the next turn holds problem 1's round 2 and problem 2's round 1.
    assert [[(m, i, r) for m, i, r, _ in rows] for rows in calls] == [
        [("A", 0, 1), ("A", 1, 1)], [("B", 0, 1), ("B", 1, 1)],
        [("A", 1, 2), ("A", 2, 1)], [("B", 1, 2), ("B", 2, 1)],
        [("A", 1, 3), ("A", 2, 2)], [("B", 1, 3), ("B", 2, 2)],
        [("A", 3, 1), ("A", 4, 1)], [("B", 3, 1), ("B", 4, 1)],
        [("A", 4, 2)], [("B", 4, 2)], [("A", 4, 3)], [("B", 4, 3)],
    ]
    assert len(group_calls) == 16 and max(len(rows) for rows in group_calls) == 2
    # Each row's seed is its own problem's and round's, however the turns were batched.
    assert sorted(row for rows in calls for row in rows) == sorted(row for rows in group_calls for row in rows)
    assert all(seed == row_seed(7, i, "debate", r, m.lower()) for rows in calls for m, i, r, seed in rows)

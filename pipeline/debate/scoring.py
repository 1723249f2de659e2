"""How a debate record is scored from the texts it keeps: each reply read, then the verdicts derived.

Every generation a record holds (each debate turn, model b's solo answer, each vote sample) is a *reply*: its
text, why it stopped, and the answer read from it both ways (``pipeline.answers.Reading``). Everything else a
record says (the final answer, agreement, correct or not, the vote's majority) is derived here from those
replies and the gold answer, by the same function when the engine writes a record and when ``jobs/rescore.py``
reads a run's records again with today's reading, so a rescored record is exactly what a new run that generated
the same texts would hold. Kept apart from the engine so that re-scoring loads no torch.
"""

from __future__ import annotations

from typing import Any

from pipeline.answers import read_answer, same_answer
from pipeline.debate.settings import SPEAKERS
from pipeline.debate.vote import majority

# What a reply holds besides its text and cost: the readings, which re-scoring rewrites.
READING_KEYS = ("answer", "flexible", "form")


def reading_of(text: str, stopped: bool) -> dict[str, Any]:
    """A reply's readings: ``answer`` (strict: the explicit final answer, the one scored), ``flexible`` and
    ``form``; a reply cut off at the token limit (``stopped`` false) is read as cut off."""
    reading = read_answer(text, complete=stopped)
    return {"answer": reading.strict, "flexible": reading.flexible, "form": reading.form}


def reply(text: str, stopped: bool, tokens: int, seconds: float) -> dict[str, Any]:
    """One generation as a record keeps it: text, stop reason (``stopped``: it ended on its end-of-turn token;
    false: cut at the token limit), readings, tokens and its share of the batch's wall time."""
    return {"text": text, "stopped": stopped, **reading_of(text, stopped), "tokens": tokens, "seconds": round(seconds, 4)}


def latest(turns: list[dict[str, Any]], speaker: str) -> dict[str, Any] | None:
    """The speaker's last turn, None before it has spoken."""
    return next((t for t in reversed(turns) if t["model"] == speaker), None)


def agree(turns: list[dict[str, Any]]) -> bool:
    """Whether both models' latest turns state the same answer (the strict reading): a debate stops there. A
    reply that states none never agrees, so a number in passing is not taken as agreement."""
    a, b = latest(turns, SPEAKERS[0]), latest(turns, SPEAKERS[1])
    return a is not None and b is not None and same_answer(a["answer"], b["answer"])


def final_turn(turns: list[dict[str, Any]], agreed: bool, rule: str) -> int:
    """The index of the turn whose answer is the debate's: model a's latest once they agree, else by ``rule``
    (``last`` turn, or the latest of model ``a`` / ``b``)."""
    speaker = SPEAKERS[0] if agreed else rule
    if speaker == "last":
        return len(turns) - 1
    return max(i for i, t in enumerate(turns) if t["model"] == speaker)


def score_vote(vote: dict[str, Any], gold: str) -> dict[str, Any]:
    """A vote's samples (the strict answers, in order), majority, and verdict from its replies."""
    samples = [r["answer"] for r in vote["replies"]]
    answer = majority(samples)
    return {**vote, "answer": answer, "samples": samples, "correct": same_answer(answer, gold)}


def score_record(record: dict[str, Any], rule: str) -> dict[str, Any]:
    """The record with every verdict derived from its replies: ``rule`` is ``debate.final_answer``.

    The input needs ``index``, ``question``, ``gold``, ``turns`` (replies with ``model``, ``name``, ``round``) and
    ``solo`` / ``vote`` entries holding replies (model b's solo reply; each vote's ``replies``). Model a's solo
    answer is its first turn, so ``solo.a`` points there (``turn``: 0) instead of copying the text.
    """
    gold, turns = record["gold"], record["turns"]
    agreed = agree(turns)
    final = turns[final_turn(turns, agreed, rule)]
    first = {sp: next(t for t in turns if t["model"] == sp) for sp in SPEAKERS}
    solo: dict[str, Any] = {}
    for key, entry in record["solo"].items():
        source = first[key] if key == SPEAKERS[0] else entry
        solo[key] = {**entry, **{k: source[k] for k in (*READING_KEYS, "stopped", "tokens", "seconds")},
                     "correct": same_answer(source["answer"], gold)}
        if key == SPEAKERS[0]:
            solo[key]["turn"] = turns.index(first[key])
    return {
        **record,
        "final_answer": final["answer"],
        "final_turn": turns.index(final),
        "agreed": agreed,
        "rounds": turns[-1]["round"],
        "correct": same_answer(final["answer"], gold),
        "first_answers": {sp: first[sp]["answer"] for sp in SPEAKERS},
        "solo": solo,
        "vote": {key: score_vote(vote, gold) for key, vote in record["vote"].items()},
        "tokens": sum(t["tokens"] for t in turns),
        "seconds": round(sum(t["seconds"] for t in turns), 4),
    }


def replies_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every reply of a record that keeps its text: the turns, model b's solo answer, each vote sample."""
    out = list(record["turns"])
    out += [entry for key, entry in record["solo"].items() if "text" in entry]
    out += [r for vote in record["vote"].values() for r in vote.get("replies", [])]
    return out


def rescore(record: dict[str, Any], rule: str, max_rounds: int) -> tuple[dict[str, Any], int, bool]:
    """The record read again with today's reading: the new record, how many replies' answers changed, and
    whether the debate would have stopped at another turn (the texts after it were generated under the old
    reading; only a new run gives that debate's turns exactly)."""
    changed = 0
    for entry in replies_of(record):
        new = reading_of(entry["text"], bool(entry.get("stopped", True)))
        changed += not same_answer(new["answer"], entry.get("answer")) and (new["answer"], entry.get("answer")) != (None, None)
        entry.update(new)
    scored = score_record(record, rule)
    turns = scored["turns"]
    stop = next((i for i in range(len(turns)) if agree(turns[: i + 1])), None)
    ran_out = turns[-1]["round"] == max_rounds and turns[-1]["model"] == SPEAKERS[-1]
    stop_differs = stop != len(turns) - 1 if stop is not None else not ran_out
    return scored, changed, stop_differs

"""The debate's questions as the report's browser shows them: each one's exchange turn by turn, and the
cases people used to read the notebook by hand to find (one model correcting the other, a right answer
talked out of, no agreement, an answer that could not be read)."""

from __future__ import annotations

from typing import Any

from pipeline.answers import same_answer
from pipeline.reduce.outcomes import Outcomes
from pipeline.reduce.report import Questions

# (key, label, what it means): the browser's filters, in the order its buttons show them.
FILTERS = (
    ("fixed", "debate fixed model a's answer", "model a's first answer was wrong, the debate's final answer is right"),
    ("broke", "debate broke a right answer", "some turn gave the right answer, the debate's final answer is wrong"),
    ("never_agreed", "the models never agreed", "no agreement within debate.max_rounds"),
    ("unparsable", "unparsable", "the final answer or some turn's answer could not be read as a number"),
)


def flags(record: dict[str, Any]) -> list[str]:
    """The keys of ``FILTERS`` that hold for one debate record."""
    gold, turns = record["gold"], record["turns"]
    found = {
        "fixed": not same_answer(record["first_answers"]["a"], gold) and bool(record["correct"]),
        "broke": any(same_answer(t["answer"], gold) for t in turns) and not record["correct"],
        "never_agreed": not record["agreed"],
        "unparsable": record["final_answer"] is None or any(t["answer"] is None for t in turns),
    }
    return [key for key, _, _ in FILTERS if found[key]]


def debate_questions(records: list[dict[str, Any]], outcomes: Outcomes) -> Questions:
    """The browser's data for a debate step: its outcomes, and per question its text, turns and flags."""
    details = {
        r["index"]: {
            "question": r["question"],
            "flags": flags(r),
            "turns": [{"round": t["round"], "model": t["model"], "name": t["name"], "answer": t["answer"],
                       "right": same_answer(t["answer"], r["gold"]), "text": t["text"]} for t in r["turns"]],
        }
        for r in records
    }
    return Questions(outcomes, details, FILTERS)

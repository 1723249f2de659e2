"""What each step's question browser shows (``report.Questions``): per question its text and its exchange,
and for a debate the cases people used to read the notebook by hand to find (one model correcting the other,
a right answer talked out of, no agreement, an answer that could not be read)."""

from __future__ import annotations

from typing import Any

from pipeline.answers import same_answer
from pipeline.harness.units import questions as eval_questions_of
from pipeline.reduce.outcomes import Outcomes
from pipeline.reduce.report import Questions
from pipeline.run_config import RunConfig

# (key, label, what it means): the debate browser's filters, in the order its buttons show them.
FILTERS = (
    ("fixed", "debate fixed model a's answer", "model a's first answer was wrong, the debate's final answer is right"),
    ("broke", "debate broke a right answer", "some turn gave the right answer, the debate's final answer is wrong"),
    ("never_agreed", "the models never agreed", "no agreement within debate.max_rounds"),
    ("unparsable", "no stated answer", "the final answer or some turn's reply states no answer"),
    ("cut", "cut at the token limit", "some turn's reply was cut at debate.max_new_tokens"),
)


def flags(record: dict[str, Any]) -> list[str]:
    """The keys of ``FILTERS`` that hold for one debate record."""
    gold, turns = record["gold"], record["turns"]
    found = {
        "fixed": not same_answer(record["first_answers"]["a"], gold) and bool(record["correct"]),
        "broke": any(same_answer(t["answer"], gold) for t in turns) and not record["correct"],
        "never_agreed": not record["agreed"],
        "unparsable": record["final_answer"] is None or any(t["answer"] is None for t in turns),
        "cut": any(not t["stopped"] for t in turns),
    }
    return [key for key, _, _ in FILTERS if found[key]]


def debate_questions(records: list[dict[str, Any]], outcomes: Outcomes) -> Questions:
    """A debate step's browser: its outcomes, and per question its text, turns and flags."""
    details = {
        r["index"]: {
            "question": r["question"],
            "flags": flags(r),
            "turns": [{"title": f"round {t['round']} · model {t['model']} ({t['name']})", "answer": t["answer"],
                       "right": same_answer(t["answer"], r["gold"]), "text": t["text"]} for t in r["turns"]],
        }
        for r in records
    }
    return Questions(outcomes, details, FILTERS)


def eval_questions(by_part: dict[str, list[dict[str, Any]]], config: RunConfig, outcomes: Outcomes,
                   labels: dict[str, str]) -> Questions:
    """An eval step's browser: its outcomes, and per question its text and each model's response per task
    (the answer shown is the first filter's, strict-match where there is one); ``labels``: each model's
    display name by its key in the pair."""
    text = {p.index: p.question for p in eval_questions_of(config)}
    details: dict[int, dict[str, Any]] = {}
    for part, records in by_part.items():
        key, task = part.split("/", 1)
        name = labels[key]
        for r in records:
            first = min(r["correct"], key=lambda f: (f != "strict-match", f))
            entry = details.setdefault(r["index"], {"question": text.get(r["index"], ""), "turns": []})
            entry["turns"].append({"title": f"model {key} ({name}) on {task}", "answer": r["extracted"].get(first),
                                   "right": bool(r["correct"][first]), "text": r["response"]})
    return Questions(outcomes, details)

"""The debate step's numbers, from its records: each method's row (accuracy, interval, cost, the flexible
reading, cut and unstated shares), accuracy per round, the paired tests against each baseline, the vote's
sampling metrics, how debates agreed, and each method's verdict per question. Plain data: the tables, the
figures and the JSON are drawn from it.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from pipeline.answers import same_answer
from pipeline.debate.settings import DebateSettings
from pipeline.debate.scoring import final_turn
from pipeline.debate.vote import majority
from pipeline.reduce.outcomes import Outcomes
from pipeline.reduce.sampling import scores_at, score_summary, vote_curve
from pipeline.reduce.stats import mcnemar_exact


def _row(method: str, scores: Iterable[float], tokens: Iterable[int], seconds: Iterable[float], kind: str = "method",
         facts: Iterable[tuple[bool, float, float]] = ()) -> dict[str, Any]:
    """A table row: per-question scores (1 right, 0 wrong; a fraction for mean@k) as accuracy with n and its
    95% interval. ``kind``: ``method`` (one answer per question) or ``sampling`` (read off a vote's samples).
    ``facts``, per question: (right under the flexible reading, share of its replies cut at the token limit,
    share of its replies that state no answer)."""
    scores, toks, secs, facts = list(scores), list(tokens), list(seconds), list(facts)
    n = len(scores)
    row = {
        "method": method,
        "kind": kind,
        **score_summary(scores),
        "tokens_per_question": round(sum(toks) / n, 1) if n else 0.0,
        "seconds_per_question": round(sum(secs) / n, 3) if n else 0.0,
    }
    if facts:
        row["flexible_accuracy"] = round(sum(f[0] for f in facts) / len(facts), 4)
        row["cut_off"] = round(sum(f[1] for f in facts) / len(facts), 4)
        row["no_explicit_answer"] = round(sum(f[2] for f in facts) / len(facts), 4)
    return row


def _facts(replies: list[dict[str, Any]], flexible: str | None, gold: str) -> tuple[bool, float, float]:
    """One question's (right under the flexible reading, share of ``replies`` cut off, share without an
    stated answer) for a method whose answer comes from ``replies`` (one, or a vote's k)."""
    n = len(replies)
    return (same_answer(flexible, gold), sum(not r["stopped"] for r in replies) / n, sum(r["answer"] is None for r in replies) / n)


def answer_after_round(record: dict[str, Any], round_no: int, rule: str) -> dict[str, Any]:
    """The turn whose answer the debate would give had it been stopped after ``round_no`` rounds."""
    if record["rounds"] <= round_no:
        return record["turns"][record["final_turn"]]
    turns = [t for t in record["turns"] if t["round"] <= round_no]
    return turns[final_turn(turns, False, rule)]


def role_label(key: str, models: dict[str, str]) -> str:
    """A model named by its role in the pair, so the same model twice still gives two rows: ``model a (name)``."""
    return f"model {key} ({models[key]})"


def solo_method(label: str) -> str:
    """A model-alone row's name."""
    return f"{label} alone"


def vote_method(label: str, k: int) -> str:
    """The vote row's name (the paired tests and the outcomes file name it too)."""
    return f"{label} majority vote (k={k})"


def _vote_k(entries: dict[int, dict[str, Any]]) -> int:
    return len(next(iter(entries.values()))["samples"])


def baselines(records: list[dict[str, Any]], models: dict[str, str], debate: DebateSettings) -> list[tuple[str, dict[int, dict[str, Any]]]]:
    """Each baseline's method name with its entry (answer, correct, tokens, seconds) per question index."""
    out = []
    for key in ("a", "b"):
        solo = {r["index"]: r["solo"][key] for r in records if key in r["solo"]}
        if solo:
            out.append((solo_method(role_label(key, models)), solo))
    for key in debate.baselines.vote_models:
        votes = {r["index"]: r["vote"][key] for r in records if key in r["vote"]}
        if votes:
            out.append((vote_method(role_label(key, models), _vote_k(votes)), votes))
            for j, against in budget_cuts(records, votes):
                out.append((f"{role_label(key, models)} majority vote of its first {j} ({against})", first_samples_vote(records, votes, j)))
    return out


def budget_cuts(records: list[dict[str, Any]], votes: dict[int, dict[str, Any]]) -> list[tuple[int, str]]:
    """The vote cut to the debate's own budget: how many samples (j) cost what the debate cost, in tokens per
    question, and how the cut stands to it. A vote of k samples costs k generations and a debate about 2 per
    round; tokens, not generations, are the fair unit, since a review turn is shorter than a solve and a sample
    as long as one. A budget between j and j + 1 samples gives both, one under it and one over (rounding to
    one of them would pass a vote of 20% more or fewer tokens as a like-for-like comparison). Cuts of k
    samples or more are the full vote's row already."""
    k = _vote_k(votes)
    sample_tokens = sum(v["tokens"] for v in votes.values()) / (k * len(votes))
    if not sample_tokens:
        return []
    samples = sum(r["tokens"] for r in records) / len(records) / sample_tokens
    if math.isclose(samples, round(samples)):
        cuts = [(round(samples), "the debate's tokens")]
    else:
        cuts = [(math.floor(samples), "fewer tokens than the debate"), (math.ceil(samples), "more tokens than the debate")]
    return [(j, against) for j, against in cuts if 1 <= j < k]


def first_samples_vote(records: list[dict[str, Any]], votes: dict[int, dict[str, Any]], j: int) -> dict[int, dict[str, Any]]:
    """Each question's majority of its first ``j`` samples, as a baseline entry (answer, correct, its replies,
    tokens, seconds)."""
    gold = {r["index"]: r["gold"] for r in records}
    out = {}
    for index, vote in votes.items():
        replies = vote["replies"][:j]
        answer = majority([r["answer"] for r in replies])
        out[index] = {"answer": answer, "correct": same_answer(answer, gold[index]), "replies": replies,
                      "tokens": sum(r["tokens"] for r in replies), "seconds": round(sum(r["seconds"] for r in replies), 4)}
    return out


def _replies(record: dict[str, Any], entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The replies a baseline's answer comes from: a vote's samples, or the one solo reply (model a's: its first turn)."""
    if "replies" in entry:
        return entry["replies"]
    return [record["turns"][entry["turn"]]] if "turn" in entry else [entry]


def _baseline_facts(record: dict[str, Any], entry: dict[str, Any]) -> tuple[bool, float, float]:
    replies = _replies(record, entry)
    flexible = majority([r["flexible"] for r in replies]) if "replies" in entry else replies[0]["flexible"]
    return _facts(replies, flexible, record["gold"])


def sampling(records: list[dict[str, Any]], models: dict[str, str], debate: DebateSettings) -> list[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    """Per voting model, read off its k samples: its vote row's name, the pass@k and mean@k rows of the table
    (at the vote's cost: no generation of their own) and the majority@j, pass@j, mean@j curve for j = 1..k."""
    out = []
    for key in debate.baselines.vote_models:
        mine = [r for r in records if key in r["vote"]]
        if not mine:
            continue
        samples = [r["vote"][key]["samples"] for r in mine]
        golds = [r["gold"] for r in mine]
        k = min(len(s) for s in samples)
        scores = scores_at(samples, golds, k)
        cost = ([r["vote"][key]["tokens"] for r in mine], [r["vote"][key]["seconds"] for r in mine])
        label = role_label(key, models)
        rows = [_row(f"{label} {metric}@{k}", scores[metric], *cost, kind="sampling") for metric in ("pass", "mean")]
        curve = {"model": key, "label": label, "k": k, "n": len(mine), "points": vote_curve(samples, golds)}
        out.append((vote_method(label, k), rows, curve))
    return out


def _paired(records: list[dict[str, Any]], other: str, entries: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Debate against one baseline on the questions both answered: the discordant pairs and McNemar's exact p
    (kept unrounded: a p of 1e-40 is not 0)."""
    pairs = [(bool(r["correct"]), bool(entries[r["index"]]["correct"])) for r in records if r["index"] in entries]
    only_first = sum(x and not y for x, y in pairs)
    only_second = sum(y and not x for x, y in pairs)
    return {
        "against": other,
        "n": len(pairs),
        "only_debate_right": only_first,
        "only_baseline_right": only_second,
        "difference": round((only_first - only_second) / len(pairs), 4) if pairs else 0.0,
        "p_value": mcnemar_exact(only_first, only_second),
    }


# How a debate's agreement came about, judged against each model's own answer to the problem alone
# (model a's first turn; model b's solo baseline): copying is agreement where one side dropped its own answer.
AGREEMENT_KINDS = (
    ("independent", "both had it alone"),
    ("b_adopted", "b took a's answer"),
    ("a_adopted", "a took b's answer"),
    ("both_moved", "both moved to a new answer"),
    ("b_unknown", "b agreed with a (b alone not run)"),
    ("no_agreement", "never agreed"),
)


def agreement_kind(record: dict[str, Any]) -> str:
    """One of ``AGREEMENT_KINDS``'s keys for a debate record."""
    if not record["agreed"]:
        return "no_agreement"
    final = record["final_answer"]
    a_kept = same_answer(record["first_answers"]["a"], final)
    if "b" not in record["solo"]:
        return "b_unknown" if a_kept else "both_moved"
    b_kept = same_answer(record["solo"]["b"]["answer"], final)
    return {(True, True): "independent", (True, False): "b_adopted", (False, True): "a_adopted", (False, False): "both_moved"}[(a_kept, b_kept)]


def agreement(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Debates by how they agreed, each kind with its right and wrong finals and, where one model took the
    other's answer, whether that fixed its own wrong answer or gave up its own right one."""
    rows = []
    for key, label in AGREEMENT_KINDS:
        mine = [r for r in records if agreement_kind(r) == key]
        if not mine:
            continue
        row = {"kind": key, "label": label, "debates": len(mine), "right": sum(r["correct"] for r in mine)}
        row["wrong"] = row["debates"] - row["right"]
        if key in ("a_adopted", "b_adopted"):
            mover = key[0]
            alone = [same_answer(_alone(r, mover), r["gold"]) for r in mine]
            row["fixed_own_wrong"] = sum(r["correct"] and not ok for r, ok in zip(mine, alone))
            row["gave_up_own_right"] = sum(ok and not r["correct"] for r, ok in zip(mine, alone))
        rows.append(row)
    return rows


def _alone(record: dict[str, Any], key: str) -> str | None:
    return record["first_answers"]["a"] if key == "a" else record["solo"]["b"]["answer"]


def summarize(records: list[dict[str, Any]], models: dict[str, str], debate: DebateSettings) -> dict[str, Any]:
    """All the numbers of the debate table, as plain data (the JSON file is exactly this). ``models``: each
    model's display name by its key in the pair; ``debate``: the step's ``debate`` section."""
    by_index = {r["index"]: r for r in records}
    finals = [r["turns"][r["final_turn"]] for r in records]
    rows = [_row("debate", (r["correct"] for r in records), (r["tokens"] for r in records), (r["seconds"] for r in records),
                 facts=(_facts([t], t["flexible"], r["gold"]) for r, t in zip(records, finals)))]
    paired = []
    sampled = {vote: (extra, curve) for vote, extra, curve in sampling(records, models, debate)}
    for method, entries in baselines(records, models, debate):
        mine = list(entries.values())
        rows.append(_row(method, (e["correct"] for e in mine), (e["tokens"] for e in mine), (e["seconds"] for e in mine),
                         facts=(_baseline_facts(by_index[i], e) for i, e in entries.items())))
        paired.append(_paired(records, method, entries))
        if method in sampled:
            rows += sampled[method][0]
    per_round = []
    for round_no in range(1, debate.max_rounds + 1):
        flags = [same_answer(answer_after_round(r, round_no, debate.final_answer)["answer"], r["gold"]) for r in records]
        row = _row(f"after round {round_no}", flags, [], [])
        row["still_open"] = sum(r["rounds"] > round_no for r in records)
        per_round.append({k: v for k, v in row.items() if not k.endswith("per_question") and k != "kind"})
    first_right = [same_answer(r["first_answers"]["a"], r["gold"]) for r in records]
    n = len(records)
    return {
        "methods": rows,
        "per_round": per_round,
        "debate": {
            "convergence_rate": round(sum(r["agreed"] for r in records) / n, 4) if n else 0.0,
            "mean_rounds": round(sum(r["rounds"] for r in records) / n, 3) if n else 0.0,
            "flips_right_to_wrong": sum(fr and not r["correct"] for fr, r in zip(first_right, records)),
            "flips_wrong_to_right": sum(not fr and r["correct"] for fr, r in zip(first_right, records)),
            "unparsable_final_answers": sum(r["final_answer"] is None for r in records),
            "final_answers_cut_off": sum(not t["stopped"] for t in finals),
        },
        "paired": paired,
        "sampling": [curve for _, curve in sampled.values()],
        "agreement": agreement(records),
        "models": {"a": models["a"], "b": models["b"]},
        "reading": "strict",
        "n": n,
    }


def outcomes(records: list[dict[str, Any]], models: dict[str, str], debate: DebateSettings) -> Outcomes:
    """Every method's answer and verdict per question (the compact file a results page is recomputed from)."""
    methods: dict[str, dict[int, tuple[str | None, bool]]] = {"debate": {r["index"]: (r["final_answer"], bool(r["correct"])) for r in records}}
    for method, entries in baselines(records, models, debate):
        methods[method] = {i: (e["answer"], bool(e["correct"])) for i, e in entries.items()}
    for round_no in range(1, debate.max_rounds + 1):
        answers = {r["index"]: answer_after_round(r, round_no, debate.final_answer)["answer"] for r in records}
        methods[f"debate stopped after round {round_no}"] = {r["index"]: (answers[r["index"]], same_answer(answers[r["index"]], r["gold"])) for r in records}
    return Outcomes({r["index"]: r["gold"] for r in records}, methods)

"""The eval step's numbers, from its records: one row per model x task x filter (accuracy recomputed from
lm-eval's own ``exact_match`` per question, so it does not depend on how the test set was sharded; lm-eval's
standard error, the sample standard deviation over sqrt(n), with a 95% Wilson interval beside it), the
fine-tuned models against their base on the same questions, and each row's verdict per question.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from pipeline.reduce.outcomes import Outcomes
from pipeline.reduce.stats import mcnemar_exact, wilson_interval


def _row(model: str, key: str, task: str, filter_name: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    flags = [r["correct"][filter_name] for r in records if filter_name in r["correct"]]
    n, k = len(flags), sum(flags)
    p = k / n if n else 0.0
    low, high = wilson_interval(k, n)
    seconds = sum(r["seconds"] for r in records)
    return {
        "model": model,
        "key": key,
        "task": task,
        "filter": filter_name,
        "accuracy": round(p, 4),
        "stderr": round(math.sqrt(p * (1 - p) / (n - 1)), 4) if n > 1 else 0.0,
        "ci95_low": round(low, 4),
        "ci95_high": round(high, 4),
        "correct": k,
        "n": n,
        "seconds": round(seconds, 1),
    }


def _filters(names: Iterable[str]) -> list[str]:
    """Filter names in table order: strict-match first, the rest alphabetical."""
    return sorted(set(names), key=lambda f: (f != "strict-match", f))


def summarize(by_part: dict[str, list[dict[str, Any]]], labels: dict[str, str], keys: Sequence[str], tasks: Sequence[str]) -> list[dict[str, Any]]:
    """One row per model x task x filter, in the order of ``keys`` (the models evaluated) and ``tasks``;
    ``labels``: each model's display name by its key in the pair."""
    rows = []
    for key in keys:
        for task in tasks:
            records = by_part.get(f"{key}/{task}", [])
            rows += [_row(labels[key], key, task, f, records) for f in _filters(f for r in records for f in r["correct"])]
    return rows


def against_base(by_part: dict[str, list[dict[str, Any]]], base: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Fine-tuned against base, per model x task x filter, on the questions both answered: how many responses
    are the very same text (an adapter that changed nothing must not pass for a result), the difference in
    accuracy and McNemar's exact p on the discordant questions."""
    rows = []
    for part, records in by_part.items():
        before = {r["index"]: r for r in base.get(part, [])}
        pairs = [(before[r["index"]], r) for r in records if r["index"] in before]
        if not pairs:
            continue
        key, task = part.split("/", 1)
        identical = sum(b["response"] == a["response"] for b, a in pairs)
        for name in _filters(f for _, a in pairs for f in a["correct"]):
            flags = [(b["correct"].get(name, False), a["correct"].get(name, False)) for b, a in pairs]
            gained = sum(after and not was for was, after in flags)
            lost = sum(was and not after for was, after in flags)
            base_correct, correct = sum(was for was, _ in flags), sum(after for _, after in flags)
            rows.append({
                "key": key, "task": task, "filter": name, "n": len(pairs), "identical_responses": identical,
                "base_correct": base_correct, "correct": correct,
                "base_accuracy": round(base_correct / len(pairs), 4), "accuracy": round(correct / len(pairs), 4),
                "only_finetuned_right": gained, "only_base_right": lost,
                "p_value": mcnemar_exact(gained, lost),
            })
    return rows


def outcomes(by_part: dict[str, list[dict[str, Any]]], labels: dict[str, str], keys: Sequence[str], tasks: Sequence[str],
             prefix: str) -> Outcomes:
    """Each model x task x filter's extracted answer and verdict per question, as ``<prefix><model> (<key>) <task> <filter>``."""
    methods: dict[str, dict[int, tuple[str | None, bool]]] = {}
    gold: dict[int, str] = {}
    for key in keys:
        for task in tasks:
            for r in by_part.get(f"{key}/{task}", []):
                gold[r["index"]] = r["gold"]
                for name, right in r["correct"].items():
                    column = methods.setdefault(f"{prefix}{labels[key]} ({key}) {task} {name}", {})
                    column[r["index"]] = (r["extracted"].get(name), bool(right))
    return Outcomes(gold, methods)

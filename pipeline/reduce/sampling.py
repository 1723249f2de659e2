"""Metrics of a vote's k sampled answers per question: majority@j, pass@j and mean@j for j = 1..k.

The vote baseline already samples k answers per question and model and keeps them in its record
(``vote.<model>.samples``), so these cost no generation. A single majority row hides what the samples hold:
how often any of them is right (the ceiling a better aggregator could reach) and how right one sample is
on average (the floor voting starts from). The names are NeMo-Skills': majority@k, pass@k, and mean@k for
its pass@1[avg-of-k].

- pass@j: the unbiased estimator of "at least one of j samples is right" (Chen et al. 2021), the average over
  all C(k, j) subsets of j of the k samples: 1 - C(k - c, j) / C(k, j) for c right of k; at j = k, whether
  any is right.
- mean@j: one sample's accuracy averaged the same way: c / k at every j (a flat line, pass@1 = mean@j: the
  floor the other two start from).
- majority@j: the majority (``pipeline.debate.vote.majority``, ties to the answer seen first) of the first
  j samples in the order they were generated, as a vote of j would have drawn them; at j = k it is the vote
  row. Averaged over subsets it has no closed form (2^k majorities per question), so at j = 1 it is the first
  sample's verdict, not c / k.

Each is a mean over questions of a per-question score in [0, 1]. Its 95% interval is over questions:
Wilson's where every score is 0 or 1 (a count of questions right, like the other rows of the table), the
normal interval of a mean otherwise (mean +- 1.96 s / sqrt(n), s the scores' sample standard deviation,
clipped to [0, 1]).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from pipeline.answers import same_answer
from pipeline.debate.vote import majority
from pipeline.reduce.stats import wilson_interval

METRICS = ("majority", "pass", "mean")


def pass_at_k(n: int, c: int, k: int) -> float:
    """The chance that at least one of k samples drawn without replacement from n, c of them right, is right."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_interval(scores: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """The normal 95% interval of the mean of per-question scores; (0, 1) with fewer than two questions."""
    n = len(scores)
    if n < 2:
        return (0.0, 1.0)
    mean = sum(scores) / n
    half = z * math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1) / n)
    return (max(0.0, mean - half), min(1.0, mean + half))


def score_summary(scores: Sequence[float]) -> dict[str, Any]:
    """Mean of per-question scores with its n and 95% interval, naming which interval (see the module)."""
    n = len(scores)
    binary = all(s in (0, 1) for s in scores)
    total = sum(scores)
    low, high = wilson_interval(int(total), n) if binary else mean_interval(scores)
    return {
        "accuracy": round(total / n, 4) if n else 0.0,
        "ci95_low": round(low, 4),
        "ci95_high": round(high, 4),
        "interval": "wilson" if binary else "normal",
        "correct": int(total) if binary else round(total, 2),
        "n": n,
    }


def scores_at(samples: Sequence[Sequence[str | None]], golds: Sequence[str], j: int) -> dict[str, list[float]]:
    """Each metric's per-question score at j samples, for questions with their k >= j samples and gold."""
    out: dict[str, list[float]] = {metric: [] for metric in METRICS}
    for answers, gold in zip(samples, golds):
        right = [same_answer(a, gold) for a in answers]
        out["majority"].append(float(same_answer(majority(answers[:j]), gold)))
        out["pass"].append(pass_at_k(len(right), sum(right), j))
        out["mean"].append(sum(right) / len(right))
    return out


def vote_curve(samples: Sequence[Sequence[str | None]], golds: Sequence[str]) -> list[dict[str, Any]]:
    """majority@j, pass@j and mean@j for j = 1..k (k: the fewest samples any question has), each with n and
    its interval: the points of the vote-curve plot and the JSON's ``sampling`` section."""
    k = min(len(s) for s in samples)
    points = []
    for j in range(1, k + 1):
        for metric, scores in scores_at(samples, golds, j).items():
            points.append({"metric": metric, "j": j, **score_summary(scores)})
    return points

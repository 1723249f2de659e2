"""Intervals and paired tests for accuracies measured on a few hundred problems, where a bare percentage misleads."""

from __future__ import annotations

import math


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval: sensible at 0% and 100% and for small n, unlike the normal approximation."""
    if total == 0:
        return (0.0, 0.0)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs of two methods on the same questions.

    Accuracies of two methods on one question set are paired, so their intervals overlapping says little:
    only the questions where exactly one method is right carry the difference. Under the null each such
    question is a fair coin, so the p-value is the two-sided binomial tail of ``min(b, c)`` in ``b + c``
    draws (capped at 1; 1.0 when no question is discordant).
    """
    if only_first < 0 or only_second < 0:
        raise ValueError(f"discordant counts must be >= 0, got {only_first} and {only_second}")
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_first, only_second) + 1)) / 2**n
    return min(1.0, 2 * tail)


def accuracy_cells(correct: int, total: int) -> tuple[str, str]:
    """An accuracy and its 95% Wilson interval as tables print them, each rounded once from the count
    (188 / 1319 is 14.3%; rounded first to 4 decimals, 0.1425, it would print as 14.2%)."""
    low, high = wilson_interval(correct, total)
    return f"{100 * correct / total if total else 0:.1f}%", f"{100 * low:.1f}% - {100 * high:.1f}%"


def difference_cell(only_first: int, only_second: int, total: int) -> str:
    """Two methods' accuracy difference on the same questions as tables print it, rounded once from the discordant
    counts (2 of 1,319 is +0.2 points; from a difference stored to 4 decimals, 0.0015, it would print +0.1)."""
    return f"{100 * (only_first - only_second) / total if total else 0:+.1f} pts"


def format_p(p: float) -> str:
    """A p-value as a table prints it: three significant digits, and below 0.001 two in scientific notation
    (``3.2e-41``), so a tiny p never shows as 0; one below the smallest float, as ``< 1e-300``."""
    if p >= 0.001:
        return f"{p:.3g}"
    return f"{p:.1e}" if p > 1e-300 else "< 1e-300"

"""Confidence intervals for the accuracies the evaluation reports."""
from __future__ import annotations

import math

__all__ = ["wilson_interval", "accuracy_summary"]


def wilson_interval(successes: int, n: int, *, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is sensible
    for small ``n`` and for proportions near 0 or 1, which small evaluation
    sets produce. ``n == 0`` gives the uninformative (0, 1).
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_summary(correct: dict[str, int], n: int) -> dict[str, dict]:
    """The report fields both protocols share: accuracy, counts and 95%
    intervals, per method."""
    return {
        "accuracy": {m: c / n for m, c in correct.items()},
        "correct": dict(correct),
        "interval": {m: list(wilson_interval(c, n)) for m, c in correct.items()},
    }

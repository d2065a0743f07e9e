"""Statistics for the benchmark, in pure Python and seeded: percentile-bootstrap confidence intervals,
the exact (binomial) McNemar test for paired accuracy, and the Wilson interval of a proportion (the
monitor's live rates)."""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from fractions import Fraction
from typing import Literal, TypeVar

UnitT = TypeVar("UnitT", bound=Hashable)
Statistic = Callable[[Counter[UnitT]], Sequence[float | None]]


def derive_seed(seed: int, *parts: str) -> int:
    """A seed for one named stream (say, one group's bootstrap), independent of iteration order."""
    digest = hashlib.sha256("\x1f".join([str(seed), *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0 ≤ q ≤ 1) of sorted values, interpolating linearly between closest ranks
    (numpy's default `linear` method)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be between 0 and 1")
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def bootstrap_intervals(
    units: Sequence[UnitT],
    statistic: Statistic[UnitT],
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> list[tuple[float, float] | None]:
    """Percentile-bootstrap interval of each component of `statistic`.

    Each resample draws len(units) units with replacement; `statistic` sees the drawn units as counts.
    A resample in which a component is undefined (None, say an empty Q*) leaves that component's
    distribution; a component undefined in every resample, or no resamples at all, gives None.
    """
    if resamples < 0:
        raise ValueError("resamples must be >= 0")
    if not 0.0 < level < 1.0:
        raise ValueError("level must be between 0 and 1")
    width = len(statistic(Counter(units)))
    draws: list[list[float]] = [[] for _ in range(width)]
    rng = random.Random(seed)
    for _ in range(resamples if units else 0):
        for values, value in zip(draws, statistic(Counter(rng.choices(units, k=len(units)))), strict=True):
            if value is not None:
                values.append(value)
    tail = (1.0 - level) / 2.0
    return [_interval(sorted(values), tail) if values else None for values in draws]


def _interval(values: list[float], tail: float) -> tuple[float, float]:
    return percentile(values, tail), percentile(values, 1.0 - tail)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: `only_a` items right under A only,
    `only_b` under B only. Under the null each discordant pair goes either way with probability 1/2,
    so p = min(1, 2 · P(X ≤ min(only_a, only_b))) with X ~ Binomial(only_a + only_b, 1/2)."""
    if only_a < 0 or only_b < 0:
        raise ValueError("counts must be >= 0")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = Fraction(sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


Z_95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95% by default); None when n is 0.

    Unlike the normal approximation p ± z·√(p(1−p)/n), it stays inside [0, 1] and is not empty
    at p = 0 or 1, which is where a breakage rate over a few dozen samples usually sits.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError("need 0 <= successes <= n")
    if n == 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


Weights = Literal["linear", "quadratic"] | None


def confusion_matrix(pairs: Sequence[tuple[Hashable, Hashable]], labels: Sequence[Hashable]) -> list[list[int]]:
    """Counts of (human, judge) pairs; rows are the human's label, columns the judge's."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for human, judge in pairs:
        if human not in index or judge not in index:
            raise ValueError(f"label outside {list(labels)}: {(human, judge)}")
        matrix[index[human]][index[judge]] += 1
    return matrix


def cohen_kappa(pairs: Sequence[tuple[Hashable, Hashable]], labels: Sequence[Hashable], weights: Weights = None) -> float | None:
    """Cohen's κ = 1 − observed / chance-expected disagreement. Unweighted: every disagreement weighs 1;
    `linear` / `quadratic`: |i − j| / (k − 1), or its square, for ordered labels. None when undefined
    (no pairs, or no disagreement expected by chance, e.g. both raters always give the same label)."""
    matrix = confusion_matrix(pairs, labels)
    n = len(pairs)
    if n == 0:
        return None
    rows = [sum(row) for row in matrix]
    columns = [sum(column) for column in zip(*matrix, strict=True)]
    cells = [(i, j) for i in range(len(labels)) for j in range(len(labels))]
    weight = [[_weight(i, j, len(labels), weights) for j in range(len(labels))] for i in range(len(labels))]
    observed = sum(weight[i][j] * matrix[i][j] for i, j in cells) / n
    expected = sum(weight[i][j] * rows[i] * columns[j] for i, j in cells) / (n * n)
    if expected == 0:
        return None
    return 1 - observed / expected


def _weight(i: int, j: int, k: int, weights: Weights) -> float:
    if i == j:
        return 0.0
    if weights is None:
        return 1.0
    distance = abs(i - j) / (k - 1)
    return distance if weights == "linear" else distance**2

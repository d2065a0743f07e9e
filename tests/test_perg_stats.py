"""Percentiles, bootstrap intervals, the exact McNemar test and Wilson intervals, against hand-computed values."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from proxy.perg.stats import bootstrap_intervals, derive_seed, mcnemar_exact, percentile, wilson_interval


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.5),  # position 0.5·3 = 1.5 → halfway between 2 and 3
        ([10.0, 20.0, 30.0], 0.1, 12.0),  # position 0.1·2 = 0.2 → 10 + 0.2·10
        ([float(v) for v in range(41)], 0.025, 1.0),  # position 0.025·40 = 1
        ([float(v) for v in range(41)], 0.975, 39.0),  # position 0.975·40 = 39
        ([7.0], 0.3, 7.0),
        ([1.0, 5.0], 1.0, 5.0),
        ([1.0, 5.0], 0.0, 1.0),
    ],
)
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        percentile([], 0.5)
    with pytest.raises(ValueError):
        percentile([1.0], 1.5)


@pytest.mark.parametrize(
    ("only_a", "only_b", "expected"),
    [
        (0, 0, 1.0),  # no discordant pair: no evidence
        (1, 0, 1.0),  # n=1: 2 · C(1,0)/2 = 1
        (5, 0, 0.0625),  # n=5: 2 · 1/32
        (0, 5, 0.0625),  # symmetric
        (10, 2, 0.03857421875),  # n=12: 2 · (1 + 12 + 66)/4096 = 158/4096
        (2, 8, 0.109375),  # n=10: 2 · (1 + 10 + 45)/1024 = 112/1024
        (3, 3, 1.0),  # n=6: 2 · (1 + 6 + 15 + 20)/64 = 1.3125, capped at 1
        (6, 1, 0.125),  # n=7: 2 · (1 + 7)/128 = 16/128
    ],
)
def test_mcnemar_exact(only_a: int, only_b: int, expected: float) -> None:
    assert mcnemar_exact(only_a, only_b) == pytest.approx(expected, abs=1e-12)


def test_mcnemar_rejects_negative_counts() -> None:
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def _mean(counts: Counter[int]) -> list[float | None]:
    total = sum(counts.values())
    return [sum(v * n for v, n in counts.items()) / total if total else None]


def test_bootstrap_matches_the_normal_approximation_for_a_proportion() -> None:
    # 60 successes out of 200: p = 0.3, standard error sqrt(0.3·0.7/200) = 0.0324,
    # so a 95% interval is about 0.3 ± 1.96·0.0324 = [0.236, 0.364].
    units = [1] * 60 + [0] * 140
    [interval] = bootstrap_intervals(units, _mean, resamples=2000, seed=7)
    assert interval is not None
    low, high = interval
    assert low == pytest.approx(0.3 - 1.96 * math.sqrt(0.21 / 200), abs=0.015)
    assert high == pytest.approx(0.3 + 1.96 * math.sqrt(0.21 / 200), abs=0.015)


def test_bootstrap_is_seeded() -> None:
    units = [i * i for i in range(50)]  # many distinct values: the mean of a resample rarely repeats
    first = bootstrap_intervals(units, _mean, resamples=300, seed=3)
    assert bootstrap_intervals(units, _mean, resamples=300, seed=3) == first
    assert bootstrap_intervals(units, _mean, resamples=300, seed=4) != first


def test_bootstrap_of_a_constant_sample_is_degenerate() -> None:
    assert bootstrap_intervals([1, 1, 1, 1], _mean, resamples=100, seed=0) == [(1.0, 1.0)]


def test_bootstrap_without_resamples_or_units_has_no_interval() -> None:
    assert bootstrap_intervals([1, 0], _mean, resamples=0) == [None]
    assert bootstrap_intervals([], _mean, resamples=100) == [None]


def test_undefined_resamples_are_left_out() -> None:
    # the statistic is undefined unless the resample contains a 1: with one 1 among 3 units,
    # (2/3)^3 ≈ 30% of resamples are undefined; the rest all give 1.0.
    def ones_only(counts: Counter[int]) -> list[float | None]:
        return [1.0 if counts[1] else None]

    assert bootstrap_intervals([1, 0, 0], ones_only, resamples=200, seed=1) == [(1.0, 1.0)]


def test_bootstrap_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        bootstrap_intervals([1], _mean, resamples=-1)
    with pytest.raises(ValueError):
        bootstrap_intervals([1], _mean, level=1.0)


def test_derived_seeds_differ_per_part_and_are_stable() -> None:
    assert derive_seed(0, "naive", "relevant") == derive_seed(0, "naive", "relevant")
    assert derive_seed(0, "naive", "relevant") != derive_seed(0, "naive", "mixed")
    assert derive_seed(0, "naive", "relevant") != derive_seed(1, "naive", "relevant")


@pytest.mark.parametrize(
    ("successes", "n", "expected"),
    [
        (0, 10, (0.0, 0.27753)),  # the upper bound is z² / (n + z²) at p = 0
        (5, 10, (0.23659, 0.76341)),
        (10, 10, (0.72247, 1.0)),
        (81, 263, (0.25529, 0.36621)),  # by hand: centre 0.310752, half-width 0.055461
    ],
)
def test_wilson_interval(successes: int, n: int, expected: tuple[float, float]) -> None:
    low, high = wilson_interval(successes, n)
    assert (low, high) == pytest.approx(expected, abs=1e-5)


def test_wilson_interval_edges() -> None:
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(3, 2)

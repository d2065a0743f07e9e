"""Judge calibration math (Cohen's κ, thresholds, confusion matrices) on hand-computed examples."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from proxy.eval.calibration import (
    CONSISTENCY_LABELS,
    LIKERT,
    Bootstrap,
    agreement,
    calibrate,
    cohen_kappa,
    confusion_matrix,
    follow_agreement,
    kappa_interval,
    load_judge_labels,
)
from proxy.perg.datasets import DatasetError


def test_unweighted_kappa_binary_by_hand() -> None:
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    # p_o = (20 + 15)/50 = 0.7; human y 25, n 25; judge y 30, n 20
    # p_e = (25·30 + 25·20)/50² = 0.5; κ = (0.7 − 0.5)/(1 − 0.5) = 0.4
    assert cohen_kappa(pairs, ["n", "y"]) == pytest.approx(0.4)
    assert confusion_matrix(pairs, ["n", "y"]) == [[15, 10], [5, 20]]


# Likert pairs (human, judge): (1,2) (2,1) (3,3) (5,5); both raters' marginals: one each of 1, 2, 3, 5.
LIKERT_PAIRS = [(1, 2), (2, 1), (3, 3), (5, 5)]


def test_likert_kappas_by_hand() -> None:
    # unweighted: p_o = 2/4; p_e = 4 · (1/4 · 1/4) = 1/4; κ = (1/2 − 1/4)/(3/4) = 1/3
    assert cohen_kappa(LIKERT_PAIRS, LIKERT) == pytest.approx(1 / 3)
    # linear, w = |i − j|/4: observed = (1/4 + 1/4)/4 = 1/8;
    # expected = Σ|i − j| over ordered pairs of {1,2,3,5} = 26, /4 /16 = 26/64; κ = 1 − (1/8)/(26/64) = 9/13
    assert cohen_kappa(LIKERT_PAIRS, LIKERT, "linear") == pytest.approx(9 / 13)
    # quadratic, w = (i − j)²/16: observed = (1/16 + 1/16)/4 = 1/32;
    # expected = Σ(i − j)² over ordered pairs = 70, /16 /16 = 70/256; κ = 1 − (1/32)/(70/256) = 1 − 8/70 = 31/35
    assert cohen_kappa(LIKERT_PAIRS, LIKERT, "quadratic") == pytest.approx(31 / 35)


def test_kappa_edge_cases() -> None:
    assert cohen_kappa([], ["a", "b"]) is None
    # both raters always say "a": no disagreement expected by chance, κ undefined
    assert cohen_kappa([("a", "a")] * 3, ["a", "b"]) is None
    # perfect agreement with variation: κ = 1
    assert cohen_kappa([("a", "a"), ("b", "b")], ["a", "b"]) == pytest.approx(1.0)
    # systematic disagreement: p_o = 0, p_e = 1/2 → κ = −1
    assert cohen_kappa([("a", "b"), ("b", "a")], ["a", "b"]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="label outside"):
        cohen_kappa([("a", "c")], ["a", "b"])


def test_follow_agreement_with_a_judge_failure() -> None:
    result = follow_agreement([*LIKERT_PAIRS, (4, None)])
    assert (result.n, result.n_failed) == (4, 1)
    assert result.accuracy == pytest.approx(0.5)
    assert result.kappa == pytest.approx(1 / 3)
    assert result.kappa_linear == pytest.approx(9 / 13)
    assert result.kappa_quadratic == pytest.approx(31 / 35)
    assert result.confusion[0] == [0, 1, 0, 0, 0]  # human 1 → judge 2
    assert result.confusion[3] == [0, 0, 0, 0, 0]  # human 4 only met a failure
    assert sum(map(sum, result.confusion)) == 4


def test_followed_decision_at_each_threshold() -> None:
    thresholds = follow_agreement([*LIKERT_PAIRS, (4, None)]).thresholds
    # t=1: everything is followed on both sides: accuracy 1, κ undefined
    assert (thresholds[1].accuracy, thresholds[1].kappa) == (1.0, None)
    # t=2: human F T T T, judge T F T T → accuracy 2/4;
    # p_e = (3/4)(3/4) + (1/4)(1/4) = 10/16; κ = (1/2 − 10/16)/(6/16) = −1/3
    assert thresholds[2].accuracy == pytest.approx(0.5)
    assert thresholds[2].kappa == pytest.approx(-1 / 3)
    assert thresholds[2].confusion == [[0, 1], [1, 2]]
    # t=3: human F F T T, judge F F T T → accuracy 1; p_e = 1/2 → κ = 1
    assert (thresholds[3].accuracy, thresholds[3].kappa) == (1.0, pytest.approx(1.0))
    assert thresholds[3].labels == ("False", "True")
    assert all(t.n_failed == 1 for t in thresholds.values())


def test_consistency_agreement_by_hand() -> None:
    pairs = (
        [("consistent", "consistent")] * 3
        + [("contradicts", "contradicts"), ("contradicts", "consistent"), ("cannot_compare", "consistent")]
        + [("consistent", None)]
    )
    result = agreement(pairs, CONSISTENCY_LABELS)
    assert (result.n, result.n_failed) == (6, 1)
    # p_o = 4/6; human marginals 3, 2, 1; judge 5, 1, 0: p_e = (15 + 2 + 0)/36 = 17/36
    # κ = (24/36 − 17/36)/(19/36) = 7/19
    assert result.accuracy == pytest.approx(4 / 6)
    assert result.kappa == pytest.approx(7 / 19)
    assert result.confusion == [[3, 0, 0], [1, 1, 0], [1, 0, 0]]


def test_all_judge_failures() -> None:
    result = agreement([("consistent", None), ("contradicts", None)], CONSISTENCY_LABELS)
    assert (result.n, result.n_failed, result.accuracy, result.kappa) == (0, 2, None, None)


def test_calibrate_pairs_labels_with_verdicts() -> None:
    labels = load_judge_labels()[:4]
    follow = [label.follow_score for label in labels]
    consistency = [label.consistency for label in labels]
    follow[0] = None
    result = calibrate(labels, follow, consistency)
    assert (result.follow.n, result.follow.n_failed, result.follow.accuracy) == (3, 1, 1.0)
    assert (result.consistency.n, result.consistency.accuracy) == (4, 1.0)
    with pytest.raises(ValueError):
        calibrate(labels, follow[:2], consistency)
    with pytest.raises(ValueError):
        calibrate(labels, [7, 1, 1, 1], consistency)


def test_builtin_labels_cover_both_ways() -> None:
    labels = load_judge_labels()
    assert len(labels) >= 44
    scores = Counter(label.follow_score for label in labels)
    assert set(scores) == set(LIKERT)
    assert scores[1] + scores[2] >= 10 and scores[4] + scores[5] >= 10
    verdicts = Counter(label.consistency for label in labels)
    assert set(verdicts) == set(CONSISTENCY_LABELS)
    assert verdicts["contradicts"] >= 10
    # breaking the facts and following the preference are independent: both combinations occur
    assert any(label.follow_score >= 4 and label.consistency == "contradicts" for label in labels)
    assert any(label.follow_score <= 2 and label.consistency == "consistent" for label in labels)


def test_bad_label_rows_are_listed(tmp_path: Path) -> None:
    good = {"query": "q", "preference": "p", "answer_without": "a", "answer_with": "b", "follow_score": 3, "consistency": "consistent"}
    rows = [good, {**good, "follow_score": 0}, {**good, "consistency": "maybe"}]
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\nnot json\n")
    with pytest.raises(DatasetError) as caught:
        load_judge_labels(path)
    assert [line for line, _ in caught.value.problems] == [2, 3, 4]


def test_kappa_comes_with_a_seeded_bootstrap_interval() -> None:
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15  # κ = 0.4 (above)
    interval = kappa_interval(pairs, ["n", "y"], None, Bootstrap(resamples=500, seed=1), "t")
    assert interval is not None and interval.low < 0.4 < interval.high
    assert 0.05 < interval.low < 0.4 and 0.4 < interval.high < 0.75  # 50 pairs: a wide interval
    assert interval == kappa_interval(pairs, ["n", "y"], None, Bootstrap(resamples=500, seed=1), "t")
    assert interval != kappa_interval(pairs, ["n", "y"], None, Bootstrap(resamples=500, seed=2), "t")
    wider = kappa_interval(pairs[::5], ["n", "y"], None, Bootstrap(resamples=500, seed=1), "t")
    assert wider is not None and wider.high - wider.low > interval.high - interval.low  # fewer pairs, wider
    # perfect agreement: every resample gives κ = 1; undefined κ (one label only): no interval
    assert kappa_interval([("a", "a"), ("b", "b")] * 10, ["a", "b"], None, Bootstrap(), "t") == kappa_interval(
        [("a", "a"), ("b", "b")] * 10, ["a", "b"], None, Bootstrap(), "t"
    )
    assert kappa_interval([("a", "a")] * 5, ["a", "b"], None, Bootstrap(), "t") is None
    assert kappa_interval([], ["a", "b"], None, Bootstrap(), "t") is None


def test_calibration_reports_every_kappa_with_its_interval() -> None:
    labels = load_judge_labels()
    result = calibrate(labels, [label.follow_score for label in labels], [label.consistency for label in labels], resamples=100)
    for kappa, interval in (
        (result.follow.kappa, result.follow.kappa_interval),
        (result.follow.kappa_linear, result.follow.kappa_linear_interval),
        (result.follow.kappa_quadratic, result.follow.kappa_quadratic_interval),
        (result.consistency.kappa, result.consistency.kappa_interval),
        (result.follow.thresholds[3].kappa, result.follow.thresholds[3].kappa_interval),
    ):
        assert kappa == pytest.approx(1.0) and interval is not None and interval.low == interval.high == pytest.approx(1.0)
    unrelated = calibrate(labels, [1] * len(labels), ["consistent"] * len(labels), resamples=0)
    assert unrelated.follow.kappa_interval is None  # no resamples: no interval

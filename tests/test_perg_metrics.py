"""PERG metrics on hand-computed fixtures, edge cases, intervals, grouping and paired tests."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from proxy.eval.summary import paired_test, summarize
from proxy.perg.rates import Record, afr_by_threshold, follow_distribution, point_rates, robust


def rec(item: str, nopref: bool, pref: bool, followed: bool | None = None, score: int | None = None, **extra) -> Record:
    return Record(item_id=item, correct_nopref=nopref, correct_pref=pref, followed=followed, follow_score=score, **extra)


# Relevant setting, 8 cases.
RELEVANT = [
    rec("q1", True, True, True, 5, category="science"),
    rec("q2", True, True, False, 2, category="science"),
    rec("q3", True, False, True, 4, category="science"),
    rec("q4", True, False, False, 1, category="history"),
    rec("q5", True, True, None, None, category="history"),  # judge failure
    rec("q6", False, True, True, 3, category="history"),
    rec("q7", False, False, False, 2, category="history"),
    rec("q8", False, False, None, None, category="history", extracted_nopref=False, extracted_pref=False),
]
# Irrelevant setting, no follow verdicts: Robust = Acc.
IRRELEVANT = [
    rec("q1", True, True, setting="irrelevant", relevant=False),
    rec("q2", True, False, setting="irrelevant", relevant=False),
    rec("q3", False, True, setting="irrelevant", relevant=False),
    rec("q4", False, False, setting="irrelevant", relevant=False),
]


def test_relevant_fixture_by_hand() -> None:
    rates = point_rates(RELEVANT)
    # Q* = {q1..q5}: 5 cases.
    # BR: Acc_pref over Q* = q1, q2, q5 → 3/5; BR = 1 − 3/5 = 0.4
    assert rates.breakage_rate == pytest.approx(0.4)
    # AFR: Q* = q1..q5, followed q1, q3; q5's judge failed: not followed (the paper's rule) → 1 − 2/5
    assert rates.alignment_failure_rate == pytest.approx(0.6)
    # RER: Robust q1 = T∧T, q2 = T∧F, q3 = F (wrong), q4 = F, q5 = T∧(missing: not followed) = F; 1/5 → 0.8
    assert rates.robustness_error_rate == pytest.approx(0.8)
    # PVR: A_nopref = {q1..q5}, A_pref = {q1, q2, q5, q6}; ∩ = 3, ∪ = 6; PVR = 1 − 3/6 = 0.5
    assert rates.performance_variation == pytest.approx(0.5)


def test_irrelevant_fixture_by_hand() -> None:
    rates = point_rates(IRRELEVANT)
    # Q* = {q1, q2}; Acc_pref: q1 → BR = 1 − 1/2 = 0.5
    assert rates.breakage_rate == pytest.approx(0.5)
    # no verdicts at all: AFR undefined
    assert rates.alignment_failure_rate is None
    # Robust = Acc when irrelevant: RER = BR = 0.5
    assert rates.robustness_error_rate == pytest.approx(0.5)
    # ∩ = {q1}, ∪ = {q1, q2, q3}: PVR = 1 − 1/3
    assert rates.performance_variation == pytest.approx(2 / 3)


def test_empty_q_star_gives_none_not_zero() -> None:
    records = [rec("a", False, True, True), rec("b", False, False, False)]
    rates = point_rates(records)
    assert (rates.breakage_rate, rates.alignment_failure_rate, rates.robustness_error_rate) == (None, None, None)
    # A_nopref = {}, A_pref = {a}: ∩ = 0, ∪ = 1 → PVR = 1
    assert rates.performance_variation == 1.0
    [group] = [g for g in summarize(records, resamples=50).groups if g.dimension == "all"]
    assert group.n_q_star == 0
    assert group.breakage_rate.value is None and group.breakage_rate.low is None


def test_all_unextractable_answers_count_as_wrong() -> None:
    records = [rec(f"q{i}", False, False, extracted_nopref=False, extracted_pref=False) for i in range(4)]
    rates = point_rates(records)
    assert rates.breakage_rate is None  # nothing right without preferences: Q* is empty
    assert rates.performance_variation == 0.0  # both correct sets empty: defined as 0.0
    [group] = [g for g in summarize(records, resamples=50).groups if g.dimension == "all"]
    assert (group.unextractable_nopref, group.unextractable_pref) == (1.0, 1.0)
    assert (group.accuracy_nopref, group.accuracy_pref) == (0.0, 0.0)


def test_unextractable_answers_with_preferences_are_breakage() -> None:
    records = [rec(f"q{i}", True, False, True, extracted_pref=False) for i in range(3)]
    rates = point_rates(records)
    # Q* = 3 cases, none right with preferences: BR = 1; Robust needs Acc: RER = 1; all followed: AFR = 0
    assert (rates.breakage_rate, rates.robustness_error_rate, rates.alignment_failure_rate) == (1.0, 1.0, 0.0)
    # ∩ = 0, ∪ = 3 → PVR = 1
    assert rates.performance_variation == 1.0


def test_an_unextracted_answer_cannot_be_correct() -> None:
    with pytest.raises(ValidationError):
        rec("q", True, True, extracted_pref=False)
    with pytest.raises(ValidationError):
        rec("q", True, True, extracted_nopref=False)


@pytest.mark.parametrize(
    ("correct", "relevant", "followed", "expected"),
    [
        (True, True, True, True),
        (True, True, False, False),
        (True, True, None, False),  # a missing follow verdict is not followed
        (False, True, None, False),
        (False, True, True, False),
        (True, False, None, True),
        (True, False, False, True),
        (False, False, True, False),
    ],
)
def test_robust_truth_table(correct: bool, relevant: bool, followed: bool | None, expected: bool) -> None:
    assert robust(correct, relevant, followed) is expected


def test_follow_distribution_and_threshold_sweep() -> None:
    # scores of all cases: q1 5, q2 2, q3 4, q4 1, q6 3, q7 2 (q5, q8 have none)
    assert follow_distribution(RELEVANT) == {1: 1, 2: 2, 3: 1, 4: 1, 5: 1}
    # relevant Q* cases: q1 5, q2 2, q3 4, q4 1, q5 none (not followed at any threshold)
    # t=1: 4/5 follow → 0.2; t=2: 3/5 → 0.4; t=3: 2/5 → 0.6; t=4: 2/5 → 0.6; t=5: 1/5 → 0.8
    assert afr_by_threshold(RELEVANT) == pytest.approx({1: 0.2, 2: 0.4, 3: 0.6, 4: 0.6, 5: 0.8})
    assert afr_by_threshold(IRRELEVANT) == dict.fromkeys(range(1, 6))


def test_summary_groups_and_counts() -> None:
    summary = summarize(RELEVANT + IRRELEVANT, resamples=200, seed=1)
    keys = [(g.setting, g.dimension, g.group) for g in summary.groups]
    assert keys == [
        ("relevant", "all", "all"),
        ("relevant", "source", ""),
        ("relevant", "category", "history"),
        ("relevant", "category", "science"),
        ("irrelevant", "all", "all"),
        ("irrelevant", "source", ""),
    ]
    overall = summary.groups[0]
    assert (overall.n_items, overall.n_q_star, overall.n_follow_missing) == (8, 5, 1)
    assert (overall.accuracy_nopref, overall.accuracy_pref) == (5 / 8, 4 / 8)
    assert overall.unextractable_pref == 1 / 8
    science = summary.groups[3]
    # science = q1, q2, q3, all in Q*; Acc_pref q1, q2 → BR = 1/3; followed q1, q3 → AFR = 1/3; robust q1 → RER = 2/3
    assert science.breakage_rate.value == pytest.approx(1 / 3)
    assert science.alignment_failure_rate.value == pytest.approx(1 / 3)
    assert science.robustness_error_rate.value == pytest.approx(2 / 3)


def test_intervals_bracket_the_estimates_and_are_reproducible() -> None:
    records = [rec(f"q{i}", i % 5 != 0, i % 3 != 0, i % 4 != 0) for i in range(60)]
    first = summarize(records, resamples=300, seed=5)
    assert summarize(records, resamples=300, seed=5) == first
    assert summarize(records, resamples=300, seed=6) != first
    overall = first.overall()[0]
    for estimate in (overall.breakage_rate, overall.alignment_failure_rate, overall.robustness_error_rate):
        assert estimate.value is not None and estimate.low is not None and estimate.high is not None
        assert 0.0 <= estimate.low <= estimate.value <= estimate.high <= 1.0
        assert estimate.high - estimate.low > 0.05


def test_no_resamples_gives_point_estimates_only() -> None:
    overall = summarize(RELEVANT, resamples=0).overall()[0]
    assert overall.breakage_rate.value == pytest.approx(0.4)
    assert (overall.breakage_rate.low, overall.breakage_rate.high) == (None, None)


def test_paired_mcnemar_between_strategies() -> None:
    # naive right on q1..q6, aligner on q1..q3 and q7: only naive q4, q5, q6 (3); only aligner q7 (1)
    naive = [rec(f"q{i}", True, i <= 6, strategy="naive") for i in range(1, 9)]
    aligner = [rec(f"q{i}", True, i <= 3 or i == 7, strategy="pref_aligner") for i in range(1, 9)]
    test = paired_test(naive, aligner)
    assert (test.n_pairs, test.only_a_correct, test.only_b_correct) == (8, 3, 1)
    assert (test.accuracy_a, test.accuracy_b) == (6 / 8, 4 / 8)
    # n = 4 discordant, k = 1: 2 · (1 + 4)/16 = 0.625
    assert test.p_value == pytest.approx(0.625)
    [from_summary] = summarize(naive + aligner, resamples=0).paired
    assert from_summary == test


def test_paired_test_ignores_unpaired_items() -> None:
    naive = [rec("q1", True, True, strategy="naive"), rec("q2", True, True, strategy="naive")]
    aligner = [rec("q2", True, False, strategy="pref_aligner"), rec("q3", True, True, strategy="pref_aligner")]
    test = paired_test(naive, aligner)
    assert (test.n_pairs, test.only_a_correct, test.only_b_correct) == (1, 1, 0)


def test_duplicate_items_are_rejected() -> None:
    with pytest.raises(ValueError, match="twice"):
        summarize([rec("q1", True, True), rec("q1", True, False)], resamples=0)


def test_breakage_over_readable_answers_and_preference_category_groups() -> None:
    records = [
        rec("a", True, True, True, 4, preference_category="clarity"),
        rec("b", True, False, True, 4, preference_category="clarity", extracted_pref=False),  # unreadable: wrong
        rec("c", True, False, False, 2, preference_category="examples"),
        rec("d", False, True, True, 5),
    ]
    summary = summarize(records, resamples=20)
    [overall] = summary.overall()
    # BR with unreadable = wrong (the paper's): Q* = a, b, c; right a → 2/3. Over readable answers: a, c → 1/2
    assert overall.breakage_rate.value == pytest.approx(2 / 3)
    assert (overall.breakage_rate_readable, overall.n_q_star_readable) == (0.5, 2)
    by_category = {g.group: g for g in summary.groups if g.dimension == "preference_category"}
    assert set(by_category) == {"clarity", "examples"}  # d has no category: only in "all" and its source
    assert (by_category["clarity"].n_items, by_category["clarity"].breakage_rate.value) == (2, 0.5)
    assert by_category["examples"].alignment_failure_rate.value == 1.0

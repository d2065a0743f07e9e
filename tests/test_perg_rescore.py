"""Re-scoring results CSVs, in every layout of the paper's repository, against hand-computed figures.

The `paper_*` fixtures are small files written for these tests in the paper's layouts (no row of
the paper's own files): options that are letters, a numpy array repr, `-1` / `None` / free text
in letter cells, missing ratings, per-profile answer columns, aligner answers."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from proxy.eval.rescore import rescore
from proxy.perg.datasets import DatasetError

FIXTURES = Path(__file__).parent / "fixtures" / "perg"
RATES = ["breakage_rate", "alignment_failure_rate", "robustness_error_rate", "performance_variation", "n_q_star"]

# results_letters.csv (gold, no-pref letter, pref letter, rating; followed means rating ≥ 3):
#   q1 A A A 5 | q2 B B B 2 | q3 C C D 4 | q4 D D – 3 | q5 A A A – | q6 B C B 5 | q7 C A A 1 | q8 D D D 3.0
# Q* = {q1, q2, q3, q4, q5, q8}: n_q_star = 6; q5 has no rating: not followed (the paper's rule)


def test_letters_file_by_hand() -> None:
    result = rescore(FIXTURES / "results_letters.csv")
    assert list(result)[:5] == RATES
    # BR: right with preferences in Q*: q1, q2, q5, q8 → 1 − 4/6
    assert result["breakage_rate"] == pytest.approx(1 / 3)
    # AFR: followed in Q*: q1 5, q3 4, q4 3, q8 3; not q2 (2) nor q5 (no verdict) → 1 − 4/6
    assert result["alignment_failure_rate"] == pytest.approx(1 / 3)
    # RER: robust q1 (right, 5), q8 (right, 3); q5 right but unjudged: not robust → 1 − 2/6
    assert result["robustness_error_rate"] == pytest.approx(2 / 3)
    # PVR: A_nopref = {1,2,3,4,5,8}, A_pref = {1,2,5,6,8}: ∩ = 4, ∪ = 7 → 1 − 4/7
    assert result["performance_variation"] == pytest.approx(3 / 7)
    assert (result["n_q_star"], result["n_cases"], result["n_follow_missing"]) == (6, 8, 1)
    # q4's empty letter cell is invalid: 1 of 8 unreadable with preferences; BR over readable: q1 q2 q3 q5 q8 → 1 − 4/5
    assert (result["unreadable_nopref"], result["unreadable_pref"]) == (0.0, 1 / 8)
    assert (result["breakage_rate_readable"], result["n_q_star_readable"]) == (pytest.approx(0.2), 5)


def test_threshold_changes_the_follow_based_rates() -> None:
    result = rescore(FIXTURES / "results_letters.csv", threshold=4)
    # followed now means ≥ 4: q1, q3 of the 6 → AFR = 1 − 2/6; robust: q1 only → RER = 1 − 1/6
    assert result["alignment_failure_rate"] == pytest.approx(2 / 3)
    assert result["robustness_error_rate"] == pytest.approx(5 / 6)
    assert result["breakage_rate"] == pytest.approx(1 / 3)


def test_irrelevant_setting_makes_robust_equal_accuracy() -> None:
    result = rescore(FIXTURES / "results_letters.csv", setting="irrelevant")
    # Robust = Acc over all of Q*: 4/6 → RER = BR = 1/3; no relevant preference: AFR undefined
    assert result["robustness_error_rate"] == pytest.approx(1 / 3)
    assert result["alignment_failure_rate"] is None
    assert result["n_follow_missing"] == 0


def test_per_row_uses_the_letter_columns_in_input_order() -> None:
    rows = rescore(FIXTURES / "results_letters.csv", per_row=True)["rows"]
    assert [row["line"] for row in rows] == [2, 3, 4, 5, 6, 7, 8, 9]
    # q3's raw answer says C but its letter column says D: the letter column is used
    assert rows[2] == {"line": 4, "gold": "C", "nopref": "C", "pref": "D", "followed": True}
    # q4's empty letter cell is invalid (wrong); q5's empty rating is a missing verdict
    assert rows[3]["pref"] is None
    assert rows[4]["followed"] is None


# results_raw.csv: letters extracted from the raw answers; gold given as text ("Canberra", "nitrogen")
# or a 0-based index ("0"); row 2's answer spans two lines, so later rows start one line further.
#   line 2: gold B; "The answer is B." → B; "Canberra, of course! …" → B; followed
#   line 3: gold B; "Answer: (B)" → B; "… I think it's A because …" → A; followed
#   line 5: gold A; "Nitrogen." → A; "**A**" → A; not followed
#   line 6: gold A; "A or B, not sure" → None; "A" → A; followed
#   line 7: gold A; "A. Seine" → A; "Hmm, hard to say!" → None; verdict missing


def test_raw_answers_are_extracted() -> None:
    result = rescore(FIXTURES / "results_raw.csv", per_row=True)
    assert [(r["line"], r["gold"], r["nopref"], r["pref"], r["followed"]) for r in result["rows"]] == [
        (2, "B", "B", "B", True),
        (3, "B", "B", "A", True),
        (5, "A", "A", "A", False),
        (6, "A", None, "A", True),
        (7, "A", "A", None, None),
    ]
    assert result["columns"]["read_as"] == "raw answers"
    # Q* = lines 2, 3, 5, 7 (4); right with preferences: 2, 5 → BR = 1 − 2/4
    assert result["breakage_rate"] == pytest.approx(0.5)
    # followed in Q*: 2, 3; not 5 (False) nor 7 (missing) → AFR = 1 − 2/4
    assert result["alignment_failure_rate"] == pytest.approx(0.5)
    # robust: 2 (right, followed) only → 1 − 1/4
    assert result["robustness_error_rate"] == pytest.approx(0.75)
    # A_nopref = {2,3,5,7}, A_pref = {2,5,6}: ∩ = 2, ∪ = 5 → 1 − 2/5
    assert result["performance_variation"] == pytest.approx(0.6)
    assert result["n_q_star"] == 4
    # BR both ways: over Q* cases read with preferences (2, 3, 5): 1 − 2/3; unreadable 1/5 each side
    assert result["breakage_rate_readable"] == pytest.approx(1 / 3)
    assert (result["unreadable_nopref"], result["unreadable_pref"]) == (0.2, 0.2)


def test_letters_or_raw_answers_on_request() -> None:
    letters = rescore(FIXTURES / "results_letters.csv", answers="letters", per_row=True)
    raw = rescore(FIXTURES / "results_letters.csv", answers="raw", per_row=True)
    assert letters["columns"]["read_as"] == "letters" and raw["columns"]["read_as"] == "raw answers"
    # q3's raw answer with preferences says C, its letter D; q4's raw answer is "no idea"
    assert (letters["rows"][2]["pref"], raw["rows"][2]["pref"]) == ("D", "C")
    assert raw["rows"][3]["pref"] is None
    # read as raw answers, the letters are compared with the file's own (q4's empty letter is not counted)
    agreement = raw["agreement_with_letters"]
    assert agreement["columns"] == {"without": "no_pref_ans", "with": ["pref_ans"]}
    assert agreement["answers"] == {"without": 8, "with": 7}
    assert (agreement["without"], agreement["with"], agreement["both"]) == (1.0, pytest.approx(6 / 7), pytest.approx(14 / 15))
    assert "agreement_with_letters" not in letters


# results_nofollow.csv: q1 A A A | q2 B B C | q3 C D C | q4 D D D; Q* = {q1, q2, q4}


def test_without_follow_column_the_follow_based_rates_are_omitted() -> None:
    result = rescore(FIXTURES / "results_nofollow.csv")
    assert [key for key in result if key in RATES] == ["breakage_rate", "performance_variation", "n_q_star"]
    # BR = 1 − 2/3; PVR: A_nopref = {1,2,4}, A_pref = {1,3,4}: ∩ = 2, ∪ = 4 → 0.5
    assert result["breakage_rate"] == pytest.approx(1 / 3)
    assert result["performance_variation"] == pytest.approx(0.5)
    assert result["n_q_star"] == 3


def test_without_follow_column_irrelevant_still_has_rer() -> None:
    result = rescore(FIXTURES / "results_nofollow.csv", setting="irrelevant")
    assert [key for key in result if key in RATES] == ["breakage_rate", "robustness_error_rate", "performance_variation", "n_q_star"]
    assert result["robustness_error_rate"] == pytest.approx(1 / 3)


def test_empty_q_star(tmp_path: Path) -> None:
    path = tmp_path / "none_right.csv"
    path.write_text("question,options,gold_option,nopref_answer,pref_answer,followed_pref\nq,\"['x', 'y']\",A,B,A,True\n")
    result = rescore(path)
    assert {key: result[key] for key in RATES} == {
        "breakage_rate": None,
        "alignment_failure_rate": None,
        "robustness_error_rate": None,
        "performance_variation": 1.0,  # A_nopref = {}, A_pref = {q}: ∩ = 0, ∪ = 1
        "n_q_star": 0,
    }


def test_bad_rows_are_skipped_with_their_reasons_and_strict_refuses_the_file() -> None:
    result = rescore(FIXTURES / "results_bad.csv")
    load = result["load"]
    assert (load["rows"], load["loaded"], result["n_cases"]) == (7, 1, 1)
    reasons = dict(load["skipped"])
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8]
    assert "options are not a Python list literal" in reasons[3]
    assert "gold letter 'C' is not one of the option letters AB" in reasons[4]
    assert "pref_eval_rating 'seven' is not a number" in reasons[5]
    assert "pref_eval_rating '6' is not a whole score" in reasons[6]
    assert "expected 6 fields, found 4" in reasons[7]
    assert "pref_eval_rating '2.5'" in reasons[8]
    with pytest.raises(DatasetError) as caught:
        rescore(FIXTURES / "results_bad.csv", strict=True)
    assert [line for line, _ in caught.value.problems] == [3, 4, 5, 6, 7, 8]


def test_a_file_without_answer_columns_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "no_answers.csv"
    path.write_text("question,options,gold_option\nq,\"['x', 'y']\",A\n")
    with pytest.raises(DatasetError, match="needs answer letters"):
        rescore(path)


def test_threshold_must_be_a_likert_point() -> None:
    with pytest.raises(ValueError):
        rescore(FIXTURES / "results_letters.csv", threshold=6)


# paper_chunk_letterlike.csv, a full-run chunk (gold, options, no-pref letter, pref letter):
#   1 C ['L','R','1/C','C'] C C | 2 B ['2c','c','0.8c','0.5c'] B -1 | 3 D ['A','~A','B','~B'] D None
#   4 A free text in the letter cell | 5 B X (out of range) B | 6 C empty empty
#   7 B ['BB BB','Bb Bb', …] B B | 8 A ['bank','bank', …] A B (the other "bank" is another letter)


def test_letter_like_options_and_invalid_letter_cells() -> None:
    result = rescore(FIXTURES / "paper_chunk_letterlike.csv", per_row=True)
    assert result["load"]["skipped"] == [] and result["n_cases"] == 8
    rows = [(r["gold"], r["nopref"], r["pref"]) for r in result["rows"]]
    assert rows == [("C", "C", "C"), ("B", "B", None), ("D", "D", None), ("A", "A", None),
                    ("B", None, "B"), ("C", None, None), ("B", "B", "B"), ("A", "A", "B")]  # fmt: skip
    # Q* = {1, 2, 3, 4, 7, 8}; right with preferences: 1, 7 → BR = 1 − 2/6
    assert (result["n_q_star"], result["breakage_rate"]) == (6, pytest.approx(2 / 3))
    # A_nopref = {1,2,3,4,7,8}, A_pref = {1,5,7}: ∩ = 2, ∪ = 7
    assert result["performance_variation"] == pytest.approx(5 / 7)
    assert (result["unreadable_nopref"], result["unreadable_pref"]) == (2 / 8, 4 / 8)
    # BR over the Q* answers read with preferences (1, 7, 8): 1 − 2/3
    assert (result["breakage_rate_readable"], result["n_q_star_readable"]) == (pytest.approx(1 / 3), 3)
    notes = dict(result["load"]["notes"])
    assert list(notes) == [9] and "'bank'" in notes[9]  # repeated options are kept, with a note


# paper_profiles_numpy.csv, a per-dataset file: profile_0 without preferences, profiles 1 and 2 with one each;
# options as numpy array reprs (row 3 wrapped over two lines, one element double-quoted)
#   r1 gold D: p0 D, p1 D, p2 B | r2 gold C: p0 C, p1 -1, p2 C | r3 gold D: p0 A, p1 D, p2 D


def test_per_profile_columns_and_numpy_options() -> None:
    result = rescore(FIXTURES / "paper_profiles_numpy.csv", per_row=True)
    assert result["columns"]["with"] == ["profile_1_answer", "profile_2_answer"]
    assert result["n_cases"] == 6 and result["load"]["skipped"] == []
    # Q* = r1, r2 under both profiles (4); right with preferences: r1p1, r2p2 → BR 1 − 2/4
    assert (result["n_q_star"], result["breakage_rate"]) == (4, 0.5)
    # A_nopref = {r1p1, r1p2, r2p1, r2p2}, A_pref = {r1p1, r2p2, r3p1, r3p2}: ∩ 2, ∪ 6
    assert result["performance_variation"] == pytest.approx(2 / 3)
    assert {p: (r["n_q_star"], r["breakage_rate"]) for p, r in result["profiles"].items()} == {"1": (2, 0.5), "2": (2, 0.5)}
    assert [(r["line"], r["profile"], r["pref"]) for r in result["rows"]][:3] == [(2, "1", "D"), (2, "2", "B"), (3, "1", None)]


# paper_eval.csv, an _eval file: q1 A A A 5 | q2 B B B – (judge failed; followed_pref False) |
#   q3 C C D 4 | q4 D A D 2 | q5 A A A 2; Q* = {q1, q2, q3, q5}


def test_eval_file_counts_a_missing_rating_as_not_followed_like_the_paper() -> None:
    result = rescore(FIXTURES / "paper_eval.csv")
    assert result["columns"]["follow"] == "pref_eval_rating"
    assert (result["n_q_star"], result["breakage_rate"]) == (4, 0.25)
    # followed: q1, q3 of the 4 (q2's missing rating is not followed) → AFR 0.5; robust: q1 → RER 0.75
    assert (result["alignment_failure_rate"], result["robustness_error_rate"]) == (0.5, 0.75)
    assert result["n_follow_missing"] == 1
    # the paper's own columns give the same: followed_pref and is_robust over Q*
    by_paper = rescore(FIXTURES / "paper_eval.csv", per_row=True)["rows"]
    assert [r["followed"] for r in by_paper] == [True, None, True, False, False]


def test_followed_pref_column_alone(tmp_path: Path) -> None:
    path = tmp_path / "followed_only.csv"
    with (FIXTURES / "paper_eval.csv").open(newline="") as source, path.open("w", newline="") as target:
        reader = csv.DictReader(source)
        rows = list(reader)
        writer = csv.DictWriter(target, [h for h in reader.fieldnames or () if h not in ("pref_eval_rating", "pref_eval_explanation")])
        writer.writeheader()
        writer.writerows({k: v for k, v in row.items() if k in writer.fieldnames} for row in rows)
    result = rescore(path)
    assert result["columns"]["follow"] == "followed_pref"
    assert (result["alignment_failure_rate"], result["robustness_error_rate"]) == (0.5, 0.75)


def test_aligner_file_scores_the_aligner_answers_unless_told_otherwise() -> None:
    aligner = rescore(FIXTURES / "paper_aligner.csv")
    assert aligner["columns"]["with"] == ["aligner_answer"]
    assert aligner["breakage_rate"] == pytest.approx(1 / 3)  # q2's aligner answer is -1
    naive = rescore(FIXTURES / "paper_aligner.csv", pref_column="pref_answer")
    assert naive["breakage_rate"] == pytest.approx(2 / 3)  # q1 B and q3 D
    with pytest.raises(DatasetError, match="'nope'"):
        rescore(FIXTURES / "paper_aligner.csv", pref_column="nope")

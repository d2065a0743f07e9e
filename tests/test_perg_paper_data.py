"""The paper's own published result files (read from the shared data folder, never copied into the
project; skipped with the reason when missing): re-scoring equals the paper's formula on the
paper's letters, the rows load as PERGData, and the extractor reads the paper's raw answers.

Run with `-s` to see the figures each test prints."""

from __future__ import annotations

import csv
import string
from pathlib import Path

import pytest

from proxy.eval.rescore import rescore
from proxy.perg.cells import parse_options
from proxy.perg.datasets import load_pergdata_csv
from proxy.perg.extract import extract_letter
from proxy.perg.hedges import HEDGE_POLICIES, HedgePolicy
from tests.conftest import shared_file

CHUNKS = ("mixtral-icl-relevant-full-chunk0.csv", "mixtral-icl-relevant-full-chunk3.csv")
FILES = (*CHUNKS, "mistral7b-icl-relevant-full_0.csv")


def paper_formula(path: Path) -> tuple[int, float, float]:
    """|Q*|, BR and PVR computed as the paper's code does, on its letter columns, as plain strings:
    Q* = rows with no_pref_ans == gold_option; BR = 1 − mean(pref_ans == gold_option) over Q*;
    PVR = 1 − |both right| / |right either way| over all rows."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    right_without = {i for i, row in enumerate(rows) if row["no_pref_ans"] == row["gold_option"]}
    right_with = {i for i, row in enumerate(rows) if row["pref_ans"] == row["gold_option"]}
    breakage = 1 - len(right_with & right_without) / len(right_without)
    variation = 1 - len(right_with & right_without) / len(right_with | right_without)
    return len(right_without), breakage, variation


@pytest.mark.parametrize("name", FILES)
def test_rescoring_a_shared_file_gives_the_papers_figures_exactly(name: str) -> None:
    path = shared_file("paper", name)
    q_star, breakage, variation = paper_formula(path)
    result = rescore(path)
    print(f"\n{name}: ours |Q*| {result['n_q_star']}, BR {result['breakage_rate']!r}, PVR {result['performance_variation']!r}")
    print(f"{name}: paper |Q*| {q_star}, BR {breakage!r}, PVR {variation!r}")
    print(f"{name}: BR over readable letters {result['breakage_rate_readable']!r} (Q* {result['n_q_star_readable']}); "
          f"invalid letters without / with preferences {result['unreadable_nopref']:.4f} / {result['unreadable_pref']:.4f}")  # fmt: skip
    assert result["load"]["skipped"] == [] and result["n_cases"] == result["load"]["rows"]
    assert (result["n_q_star"], result["breakage_rate"], result["performance_variation"]) == (q_star, breakage, variation)


def test_the_shared_rows_load_as_pergdata_with_nothing_skipped() -> None:
    paths = [shared_file("paper", name) for name in FILES]
    rows = loaded = 0
    for path in paths:
        summary = load_pergdata_csv(path, strict=True).summary
        print("\n" + summary.render(limit=30))
        rows, loaded = rows + summary.rows, loaded + summary.loaded
        assert summary.skipped == ()
    print(f"all shared files: {loaded} of {rows} rows loaded")
    assert loaded == rows == 2 * 1442 + 37


TUNED_ON = "mixtral-icl-relevant-full-chunk0.csv"
"""The file the extraction rules were developed on (TruthfulQA and CommonsenseQA rows); the other
two (MMLU rows, and a small Mistral-7B run) were held out: docs/eval.md gives both figures."""


def extraction_agreement(names: tuple[str, ...] = FILES, hedges: HedgePolicy = "none") -> dict[str, tuple[int, int, int]]:
    """(rows, agreeing, unreadable) per side over the shared files `names`, on rows whose paper
    letter is A–D and an option of the row, under the hedge policy `hedges`."""
    counts = {"without": [0, 0, 0], "with": [0, 0, 0]}
    for name in names:
        with shared_file("paper", name).open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                options = parse_options(row["options"])
                for side, raw, letter in (("without", "no_pref_res", "no_pref_ans"), ("with", "pref_res", "pref_ans")):
                    if not row[letter] or row[letter] not in "ABCD" or row[letter] not in string.ascii_uppercase[: len(options)]:
                        continue
                    read = extract_letter(row[raw], options, hedges)
                    tally = counts[side]
                    tally[0], tally[1], tally[2] = tally[0] + 1, tally[1] + (read == row[letter]), tally[2] + (read is None)
    return {side: (n, agree, unread) for side, (n, agree, unread) in counts.items()}


def agreement_figures(label: str, names: tuple[str, ...], hedges: HedgePolicy) -> tuple[float, float, float, float]:
    """Prints and returns the agreement without and with preferences, the unreadable ratio, and
    the agreement over the answers of both sides together."""
    counts = extraction_agreement(names, hedges)
    label = f"{label}, hedges {hedges}"
    rates = {side: (agree / n, unread / n) for side, (n, agree, unread) in counts.items()}
    for side, (n, agree, unread) in counts.items():
        print(
            f"\n{label}, answers {side} preferences: {n} rows, agreement with the paper's letters {agree / n:.4f}, unreadable {unread / n:.4f}"
        )
    ratio = rates["with"][1] / rates["without"][1]
    together = sum(agree for _, agree, _ in counts.values()) / sum(n for n, _, _ in counts.values())
    print(f"{label}, unreadable with / without preferences: {ratio:.2f}x")
    print(f"{label}, all answers (both sides): agreement with the paper's letters {together:.4f}")
    return rates["without"][0], rates["with"][0], ratio, together


@pytest.mark.parametrize("hedges", HEDGE_POLICIES)
def test_the_extractor_reads_the_papers_raw_answers(hedges: HedgePolicy) -> None:
    """Floors at the figures reached, under each hedge policy (docs/eval.md, "Reading the paper's raw
    answers", gives them and what the misses are). Issue 10's targets: 95% agreement on the raw
    answers, and unreadable answers at most 1.5x as frequent with preferences as without. Under
    `first` (a hedge read as its first option, the default of `eval`) both hold over all the files;
    by side, the answers with preferences stay below 95% (the paper's reader reads answers that name
    no option, or another one, by their meaning). Any rule change that loses agreement anywhere
    fails here."""
    everything = agreement_figures("all shared files", FILES, hedges)
    tuned = agreement_figures(f"tuned on ({TUNED_ON})", (TUNED_ON,), hedges)
    held = agreement_figures("held out (the other files)", tuple(name for name in FILES if name != TUNED_ON), hedges)
    floors = {  # (without, with preferences, at most this unreadable ratio, both sides) for all, tuned on, held out
        "none": ((0.952, 0.893, 1.77, 0.923), (0.932, 0.889, 1.15, 0.910), (0.967, 0.896, 2.96, 0.932)),
        "first": ((0.975, 0.926, 1.30, 0.951), (0.977, 0.922, 1.78, 0.950), (0.974, 0.929, 1.11, 0.951)),
    }[hedges]
    for figures, least in zip((everything, tuned, held), floors, strict=True):
        (without, with_preferences, ratio, together), (least_without, least_with, most_ratio, least_together) = figures, least
        assert without >= least_without and with_preferences >= least_with and ratio <= most_ratio and together >= least_together
    if hedges == "first":  # the issue's targets, over all the files
        assert everything[3] >= 0.95 and everything[2] <= 1.5


def test_eval_metrics_prints_the_agreement_with_the_papers_letters() -> None:
    """`eval metrics --answers raw` compares the letters it reads with the file's own, over every
    answer whose paper letter is valid (A–D or further): over the three files, 95% or more."""
    agree = answers = 0
    for name in FILES:
        result = rescore(shared_file("paper", name), answers="raw", hedges="first")
        agreement = result["agreement_with_letters"]
        assert agreement["columns"] == {"without": "no_pref_ans", "with": ["pref_ans"]}
        print(
            f"\n{name}: agreement with the paper's letters {agreement['without']:.4f} / {agreement['with']:.4f}, both {agreement['both']:.4f}"
        )
        agree += round(agreement["without"] * agreement["answers"]["without"] + agreement["with"] * agreement["answers"]["with"])
        answers += agreement["answers"]["without"] + agreement["answers"]["with"]
    print(f"all shared files: {agree} of {answers} answers read as the paper's letter ({agree / answers:.4f})")
    assert agree / answers >= 0.951

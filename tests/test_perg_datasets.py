"""Datasets: the built-in sample, the loaders on fixtures, PERG settings and the MCQ prompt."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from proxy.perg.cases import PROMPT_VERSION, build_cases, load_preferences, mcq_prompt
from proxy.perg.datasets import (
    DatasetError,
    Item,
    load_builtin,
    load_jsonl,
    load_pergdata_csv,
    parse_gold,
    parse_options,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "perg"
SHARED = ROOT.parent / "shared" / "data"
CATEGORIES = {"science", "mathematics", "history", "geography", "everyday_reasoning", "misconceptions"}


def test_builtin_dataset_shape() -> None:
    items = load_builtin()
    assert len(items) >= 72
    assert len({item.id for item in items}) == len(items)
    assert len({item.question for item in items}) == len(items)
    assert {item.source for item in items} == {"perg-builtin"}
    assert all(len(item.options) == 4 for item in items)
    per_category = Counter(item.category for item in items)
    assert set(per_category) == CATEGORIES
    assert min(per_category.values()) >= 12


def test_builtin_gold_letters_are_spread_evenly() -> None:
    items = load_builtin()
    golds = Counter(item.gold for item in items)
    assert set(golds) == set("ABCD")
    assert max(golds.values()) - min(golds.values()) <= 1
    for category in CATEGORIES:
        assert len({item.gold for item in items if item.category == category}) == 4


def test_builtin_preferences() -> None:
    pool = load_preferences()
    assert len(pool.style) >= 16 and len(pool.unrelated) >= 12
    everything = pool.style + pool.unrelated
    assert len({p.id for p in everything}) == len(everything)
    assert len({p.text for p in everything}) == len(everything)


def test_shared_data_loads_when_present() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    items = load_jsonl(SHARED / "truthfulqa_mc1.jsonl")
    assert len(items) == 817
    assert max(len(item.options) for item in items) == 13
    assert all(item.category is None for item in items)
    pool = load_preferences(SHARED / "preferences.json")
    assert (len(pool.style), len(pool.unrelated)) == (16, 12)


def test_jsonl_loader_on_a_fixture() -> None:
    first, second = load_jsonl(FIXTURES / "items.jsonl")
    assert first == Item(
        id="t-1",
        source="fixture",
        category="geography",
        question="What is the capital of Canada?",
        options=("Toronto", "Ottawa", "Vancouver"),
        gold="B",
    )
    assert (second.category, second.letters, second.option("C")) == (None, "ABCDE", "8")


def test_jsonl_bad_rows_are_all_listed() -> None:
    with pytest.raises(DatasetError) as caught:
        load_jsonl(FIXTURES / "items_bad.jsonl")
    problems = dict(caught.value.problems)
    assert sorted(problems) == [2, 3, 4, 5, 6, 7]
    assert "gold 'C' is not one of the option letters AB" in problems[2]
    assert "options" in problems[3]
    assert "duplicate id 'b-1' (first on line 1)" in problems[5]
    assert "JSON object" in problems[6]
    assert "distinct" in problems[7]
    assert "items_bad.jsonl: 6 bad row(s)" in str(caught.value)


def test_pergdata_csv_loader_on_a_fixture() -> None:
    cases = load_pergdata_csv(FIXTURES / "pergdata.csv")
    assert [case.item.id for case in cases] == ["pergdata-2", "pergdata-3", "pergdata-5", "pergdata-6"]
    # gold written as a letter, a 0-based index, a lowercase parenthesised letter, an option's text
    assert [case.item.gold for case in cases] == ["B", "B", "B", "C"]
    assert cases[1].item.option("B") == "8"
    assert cases[1].preferences == ("Explain it as you would to a child,\nwith simple words.",)
    assert [case.item.source for case in cases] == ["geo_quiz", "nature", "pergdata", "geo_quiz"]
    assert {case.setting for case in cases} == {"relevant"}
    assert all(case.relevant for case in cases)
    assert not load_pergdata_csv(FIXTURES / "pergdata.csv", setting="irrelevant")[0].relevant


def test_pergdata_bad_rows_are_all_listed_and_never_evaluated(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(DatasetError) as caught:
        load_pergdata_csv(FIXTURES / "pergdata_bad.csv")
    problems = dict(caught.value.problems)
    assert sorted(problems) == [3, 4, 5, 6, 7, 8]
    assert "not a Python list literal" in problems[3]
    assert "pwned" not in capfd.readouterr().out
    assert "gold 'C'" in problems[4]
    assert "ambiguous" in problems[5]
    assert "preference is empty" in problems[6]
    assert "list of strings" in problems[7]
    assert "expected 5 fields, found 6" in problems[8]


def test_pergdata_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text("question,options\nq,\"['a', 'b']\"\n")
    with pytest.raises(DatasetError, match=r"line 1: missing column\(s\): gold_option, preference"):
        load_pergdata_csv(path)


@pytest.mark.parametrize(
    ("value", "options", "expected"),
    [
        ("B", ["x", "y", "z"], "B"),
        (" c ", ["x", "y", "z"], "C"),
        ("(A)", ["x", "y"], "A"),
        ("B.", ["x", "y"], "B"),
        ("0", ["x", "y"], "A"),
        ("2", ["x", "y", "z"], "C"),
        ("Paris", ["London", "Paris"], "B"),
        ("paris.", ["London", "Paris"], "B"),
        ("8", ["6", "8"], "B"),  # an option's text; 8 is no valid index here
        ("1", ["1", "2"], None),  # index 1 is B but option A's text is "1": ambiguous
        ("C", ["x", "y"], None),
        ("5", ["x", "y"], None),
        ("Rome", ["London", "Paris"], None),
    ],
)
def test_parse_gold(value: str, options: list[str], expected: str | None) -> None:
    if expected is None:
        with pytest.raises(ValueError):
            parse_gold(value, options)
    else:
        assert parse_gold(value, options) == expected


@pytest.mark.parametrize("value", ["['a', 'b']", "('a', 'b')", "[1, 2.5]", ' ["a", "b"] '])
def test_parse_options_reads_literals(value: str) -> None:
    assert len(parse_options(value)) == 2


@pytest.mark.parametrize("value", ["open('x')", "[a, b]", "'ab'", "{'a'}", "[['a']]", "["])
def test_parse_options_rejects_everything_else(value: str) -> None:
    with pytest.raises(ValueError):
        parse_options(value)


def test_item_rejects_gold_beyond_options() -> None:
    with pytest.raises(ValidationError):
        Item(id="x", source="s", question="q", options=("a", "b", "c", "d"), gold="E")


def test_settings_follow_the_design() -> None:
    items = load_builtin()[:10]
    pool = load_preferences()
    style = {p.text for p in pool.style}
    unrelated = {p.text for p in pool.unrelated}
    cases = build_cases(items, pool, seed=3)
    assert len(cases) == 30
    by_key = {case.key: case for case in cases}
    for item in items:
        relevant = by_key[f"{item.id}/relevant"]
        irrelevant = by_key[f"{item.id}/irrelevant"]
        mixed = by_key[f"{item.id}/mixed"]
        assert len(relevant.preferences) == 1 and relevant.preferences[0] in style
        assert len(irrelevant.preferences) == 3 and set(irrelevant.preferences) <= unrelated
        assert len(set(irrelevant.preferences)) == 3
        # mixed = the irrelevant set with the relevant case's style preference inserted
        assert len(mixed.preferences) == 4
        assert [p for p in mixed.preferences if p in style] == list(relevant.preferences)
        assert [p for p in mixed.preferences if p in unrelated] == list(irrelevant.preferences)
        assert (relevant.relevant, irrelevant.relevant, mixed.relevant) == (True, False, True)


def test_settings_are_deterministic_and_independent_of_the_item_list() -> None:
    items = load_builtin()
    pool = load_preferences()
    full = {case.key: case for case in build_cases(items, pool, seed=11)}
    subset = build_cases(list(reversed(items[5:20])), pool, seed=11)
    assert all(full[case.key] == case for case in subset)
    assert build_cases(items, pool, seed=11) == list(full.values())
    other = {case.key: case for case in build_cases(items, pool, seed=12)}
    assert sum(full[key] != other[key] for key in full) > len(full) // 2
    style = {p.text for p in pool.style}
    mixed = [case.preferences for case in full.values() if case.setting == "mixed"]
    # the style preference lands at every position of the mixed set, not always at the same one
    assert {next(i for i, p in enumerate(prefs) if p in style) for prefs in mixed} == {0, 1, 2, 3}


def test_build_cases_validates_its_arguments() -> None:
    items = load_builtin()[:2]
    pool = load_preferences()
    with pytest.raises(ValueError, match="n_unrelated"):
        build_cases(items, pool, n_unrelated=len(pool.unrelated) + 1)
    with pytest.raises(ValueError, match="unknown setting"):
        build_cases(items, pool, ["relevant", "sideways"])  # type: ignore[list-item]
    assert [c.setting for c in build_cases(items, pool, ["irrelevant"], n_unrelated=1)] == ["irrelevant"] * 2


def test_bad_preference_pool(tmp_path: Path) -> None:
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps({"style": [], "unrelated": [{"id": "x", "text": "y"}]}))
    with pytest.raises(DatasetError, match="style"):
        load_preferences(path)


def test_mcq_prompt() -> None:
    item = Item(id="x", source="s", question="Which planet is largest?", options=("Mars", "Jupiter", "Venus"), gold="B")
    assert mcq_prompt(item) == (
        "Which planet is largest?\n\nA. Mars\nB. Jupiter\nC. Venus\n\nAnswer with the letter of the correct option (A, B or C)."
    )
    assert PROMPT_VERSION

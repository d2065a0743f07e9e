"""Datasets: the built-in sample, the loaders on fixtures, PERG settings and the MCQ prompt."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from proxy.perg.cases import PROMPT_VERSION, build_cases, load_paper_irrelevant, load_preferences, mcq_prompt
from proxy.perg.cells import parse_gold, parse_options, read_letter_cell, repeated_options
from proxy.perg.datasets import PREFERENCE_CATEGORIES, DatasetError, Item, load_builtin, load_jsonl, load_pergdata_csv
from tests.conftest import shared_file

FIXTURES = Path(__file__).parent / "fixtures" / "perg"
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


def test_builtin_style_preferences_carry_the_papers_categories() -> None:
    pool = load_preferences()
    assert {p.category for p in pool.style} == set(PREFERENCE_CATEGORIES)
    assert all(p.category is None for p in pool.unrelated)


def test_shared_data_loads_when_present() -> None:
    loaded = load_jsonl(shared_file("truthfulqa_mc1.jsonl"), strict=True)
    items = loaded.entries
    assert len(items) == 817 and loaded.summary.skipped == ()
    assert max(len(item.options) for item in items) == 13
    assert all(item.category is None for item in items)
    pool = load_preferences(shared_file("preferences.json"))
    assert (len(pool.style), len(pool.unrelated)) == (16, 12)


def test_jsonl_loader_on_a_fixture() -> None:
    first, second = load_jsonl(FIXTURES / "items.jsonl").entries
    assert first == Item(
        id="t-1",
        source="fixture",
        category="geography",
        question="What is the capital of Canada?",
        options=("Toronto", "Ottawa", "Vancouver"),
        gold="B",
    )
    assert (second.category, second.letters, second.option("C")) == (None, "ABCDE", "8")


def test_jsonl_bad_rows_are_skipped_and_listed() -> None:
    loaded = load_jsonl(FIXTURES / "items_bad.jsonl")
    # "Yes" and "yes." are two options (duplicates are exact, case counts): that row loads
    assert [item.id for item in loaded.entries] == ["b-1", "b-6"]
    summary = loaded.summary
    assert (summary.rows, summary.loaded) == (7, 2)
    problems = dict(summary.skipped)
    assert sorted(problems) == [2, 3, 4, 5, 6]
    assert "gold 'C' is not one of the option letters AB" in problems[2]
    assert "options" in problems[3]
    assert "duplicate id 'b-1' (first on line 1)" in problems[5]
    assert "JSON object" in problems[6]
    assert "items_bad.jsonl: 7 rows, 2 loaded, 5 skipped" in summary.render()
    assert "skipped line 5: duplicate id" in summary.render()


def test_strict_refuses_a_file_with_any_bad_row() -> None:
    with pytest.raises(DatasetError) as caught:
        load_jsonl(FIXTURES / "items_bad.jsonl", strict=True)
    assert [line for line, _ in caught.value.problems] == [2, 3, 4, 5, 6]
    assert "items_bad.jsonl: 5 bad row(s)" in str(caught.value)


def test_a_file_with_no_usable_row_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "none.jsonl"
    path.write_text('{"id": "x", "source": "s", "question": "q", "options": ["a"], "gold": "A"}\n')
    with pytest.raises(DatasetError, match="1 bad row"):
        load_jsonl(path)


def test_pergdata_csv_loader_on_a_fixture() -> None:
    cases = load_pergdata_csv(FIXTURES / "pergdata.csv").entries
    assert [case.item.id for case in cases] == ["pergdata-2", "pergdata-3", "pergdata-5", "pergdata-6"]
    # gold written as a letter, a 0-based index, a lowercase parenthesised letter, an option's text
    assert [case.item.gold for case in cases] == ["B", "B", "B", "C"]
    assert cases[1].item.option("B") == "8"
    assert cases[1].preferences == ("Explain it as you would to a child,\nwith simple words.",)
    assert [case.item.source for case in cases] == ["geo_quiz", "nature", "pergdata", "geo_quiz"]
    assert {case.setting for case in cases} == {"relevant"}
    assert all(case.relevant for case in cases)
    assert not load_pergdata_csv(FIXTURES / "pergdata.csv", setting="irrelevant").entries[0].relevant


def test_pergdata_bad_rows_are_skipped_listed_and_never_evaluated(capfd: pytest.CaptureFixture[str]) -> None:
    loaded = load_pergdata_csv(FIXTURES / "pergdata_bad.csv")
    assert [case.item.question for case in loaded.entries] == ["Fine"]
    problems = dict(loaded.summary.skipped)
    assert sorted(problems) == [3, 4, 5, 6, 7, 8]
    assert "not a Python list literal" in problems[3]
    assert "pwned" not in capfd.readouterr().out
    assert "gold letter 'C'" in problems[4]
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
        # a capital letter of an existing option is that letter, whatever the options say (MMLU)
        ("C", ["L", "R", "1/C", "C"], "C"),
        ("B", ["2c", "c", "0.8c", "0.5c"], "B"),
        ("A", ["A", "~A", "B", "~B"], "A"),
        ("E", ["A", "B", "C", "E"], None),  # a capital letter beyond the options is out of range
        ("c", ["2c", "c", "0.8c", "0.5c"], None),  # lowercase: letter C or the text of option B
        ("bank", ["bank", "bank", "river"], None),  # the text of two options
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


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("['0' '4' '2' '6']", ("0", "4", "2", "6")),  # numpy's repr: literal_eval would make one option "0426"
        ("['8' '2' '24' '120']", ("8", "2", "24", "120")),
        (
            "['The first one' 'The second'\n 'The third' \"It's the fourth\"]",
            ("The first one", "The second", "The third", "It's the fourth"),
        ),
        ("[1 2 3]", ("1", "2", "3")),
        ("['only one']", ("only one",)),
        ("['a', 'b']", ("a", "b")),
    ],
)
def test_parse_options_reads_numpy_array_reprs(value: str, expected: tuple[str, ...]) -> None:
    assert parse_options(value) == expected


@pytest.mark.parametrize("value", ["open('x')", "[a, b]", "'ab'", "{'a'}", "[['a']]", "[", "['a' b]", "['a' 'b"])
def test_parse_options_rejects_everything_else(value: str) -> None:
    with pytest.raises(ValueError):
        parse_options(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("B", "B"), (" c ", "C"), ("-1", None), ("", None), ("None", None), ("E", None), ("The answer is B", None), ("BB", None)],
)
def test_letter_cells_are_read_strictly(value: str, expected: str | None) -> None:
    assert read_letter_cell(value, 4) == expected


def test_repeated_options_are_kept_and_found_case_sensitively() -> None:
    item = Item(id="x", source="s", question="q", options=("bank", "bank", "river"), gold="B")
    assert item.option("B") == "bank"
    assert repeated_options(item.options) == ["bank"]
    assert repeated_options(("BB BB", "Bb Bb", "bb  bb")) == []
    assert repeated_options(("BB BB", "BB  BB")) == ["BB BB"]


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


def test_the_papers_layout_has_fixed_irrelevant_preferences_with_the_relevant_one_in_the_middle() -> None:
    items = load_builtin()[:6]
    pool = load_preferences()
    fixed = load_paper_irrelevant()
    assert len(fixed) == 5 and not set(fixed) & {p.text for p in pool.unrelated + pool.style}
    cases = {case.key: case for case in build_cases(items, pool, seed=2, irrelevant=fixed)}
    for item in items:
        relevant, irrelevant, mixed = (cases[f"{item.id}/{s}"] for s in ("relevant", "irrelevant", "mixed"))
        assert irrelevant.preferences == fixed
        assert mixed.preferences == (*fixed[:2], relevant.preferences[0], *fixed[2:])
        assert relevant.preference_category in PREFERENCE_CATEGORIES and irrelevant.preference_category is None
        assert mixed.preference_category == relevant.preference_category


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

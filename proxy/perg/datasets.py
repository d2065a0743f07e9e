"""Datasets: the `Item` and `PreferenceItem` models and the loaders.

Three sources: JSONL in the shared-data schema (`id`, `source`, `question`, `options`, `gold`,
optional `category`; other keys are ignored), the PERGData CSV layout, and the built-in sample
shipped as package data. Every loader reads the whole file and raises one `DatasetError` that
lists every bad row with its line number; no row is ever skipped silently (a blank line is not a row).
"""

from __future__ import annotations

import ast
import csv
import json
import re
import string
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

T = TypeVar("T")

LETTERS = string.ascii_uppercase
BUILTIN_DATASET = "builtin_mcq.jsonl"
ITEM_FIELDS = ("id", "source", "category", "question", "options", "gold")
PERGDATA_COLUMNS = ("question", "options", "gold_option", "preference")
Setting = Literal["relevant", "irrelevant", "mixed"]
SETTINGS: tuple[Setting, ...] = ("relevant", "irrelevant", "mixed")

_LETTER_FORM = re.compile(r"^\(?([A-Za-z])\)?[.):]?$")
_SPACES = re.compile(r"\s+")


class DatasetError(ValueError):
    """A dataset file has bad rows; `problems` holds every one as (line number, message)."""

    def __init__(self, name: str, problems: Sequence[tuple[int, str]]) -> None:
        self.name = name
        self.problems = tuple(problems)
        listing = "\n".join(f"  line {line}: {message}" for line, message in self.problems)
        super().__init__(f"{name}: {len(self.problems)} bad row(s)\n{listing}")


def normalize_text(text: str) -> str:
    """Casefolded, whitespace collapsed, trailing full stop removed: how option texts are compared."""
    return _SPACES.sub(" ", text).strip().rstrip(".").strip().casefold()


class Item(BaseModel):
    """One multiple-choice question. Options are lettered A, B, C … in order; `gold` is the right letter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    category: str | None = None
    question: str = Field(min_length=1)
    options: tuple[str, ...] = Field(min_length=2, max_length=len(LETTERS))
    gold: str = Field(pattern=r"^[A-Z]$")

    @field_validator("options")
    @classmethod
    def _distinct_options(cls, options: tuple[str, ...]) -> tuple[str, ...]:
        normalized = [normalize_text(option) for option in options]
        if any(not text for text in normalized):
            raise ValueError("options must not be blank")
        if len(set(normalized)) != len(normalized):
            raise ValueError("options must be distinct")
        return options

    @model_validator(mode="after")
    def _gold_in_range(self) -> Item:
        if self.gold not in self.letters:
            raise ValueError(f"gold {self.gold!r} is not one of the option letters {self.letters}")
        return self

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.options)]

    def option(self, letter: str) -> str:
        return self.options[self.letters.index(letter)]


class PreferenceItem(BaseModel):
    """One PERG case: an item asked under one preference setting, with the preferences sent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    item: Item
    setting: Setting
    preferences: tuple[str, ...] = Field(min_length=1)

    @property
    def relevant(self) -> bool:
        """PrefRel: some preference applies to the question (the relevant and mixed settings)."""
        return self.setting != "irrelevant"

    @property
    def key(self) -> str:
        return f"{self.item.id}/{self.setting}"


def parse_options(value: str) -> tuple[str, ...]:
    """Options written as a Python list literal (`"['a', 'b']"`), read with `ast.literal_eval`, never eval."""
    try:
        parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError) as error:
        raise ValueError(f"options are not a Python list literal: {error.__class__.__name__}") from None
    if not isinstance(parsed, list | tuple) or not all(isinstance(o, str | int | float) for o in parsed):
        raise ValueError("options must be a list of strings")
    return tuple(str(option).strip() for option in parsed)


def parse_gold(value: str, options: Sequence[str]) -> str:
    """The gold letter named by `value`: a letter (`B`, `b`, `(B)`, `B.`), a 0-based index (`1` is B)
    or an option's text (compared casefolded, trailing full stop ignored).

    A value that reads two ways pointing at different options (the index `2` when option B's text is
    `2`) is rejected as ambiguous rather than guessed.
    """
    text = value.strip()
    letters = LETTERS[: len(options)]
    texts = [normalize_text(option) for option in options]
    match = _LETTER_FORM.match(text)
    as_letter = match.group(1).upper() if match and match.group(1).upper() in letters else None
    as_index = letters[int(text)] if text.isdigit() and int(text) < len(letters) else None
    as_text = letters[texts.index(normalize_text(text))] if normalize_text(text) in texts else None
    readings = {reading for reading in (as_letter, as_index, as_text) if reading is not None}
    if len(readings) > 1:
        raise ValueError(f"gold {value!r} is ambiguous: it could mean option {' or '.join(sorted(readings))}")
    if not readings:
        raise ValueError(f"gold {value!r} is not a letter A-{letters[-1]}, a 0-based index or an option's text")
    return readings.pop()


def describe(error: Exception) -> str:
    """One line for a bad row: pydantic errors as `field: message`, others as their message."""
    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in error.errors())
    return str(error)


def load_jsonl(path: str | Path) -> list[Item]:
    """Items from a JSONL file in the shared-data schema."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        return parse_jsonl(handle, str(path))


def load_builtin() -> list[Item]:
    """The built-in sample written for this project (package data, no network, no shared files)."""
    text = (resources.files("proxy.perg") / "data" / BUILTIN_DATASET).read_text(encoding="utf-8")
    return parse_jsonl(text.splitlines(), BUILTIN_DATASET)


def parse_jsonl(lines: Iterable[str], name: str) -> list[Item]:
    """Items from JSONL lines; `name` labels the errors. Duplicate ids are bad rows too."""
    items: list[Item] = []
    problems: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = _jsonl_item(line)
        except ValueError as error:
            problems.append((number, describe(error)))
            continue
        if item.id in seen:
            problems.append((number, f"duplicate id {item.id!r} (first on line {seen[item.id]})"))
            continue
        seen[item.id] = number
        items.append(item)
    if problems:
        raise DatasetError(name, problems)
    return items


def _jsonl_item(line: str) -> Item:
    row = json.loads(line)  # json.JSONDecodeError is a ValueError
    if not isinstance(row, dict):
        raise ValueError("a row must be a JSON object")
    return Item(**{key: row[key] for key in ITEM_FIELDS if key in row})


def csv_rows(path: str | Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each CSV record, header checked; a record may span lines (quoted newlines).

    Malformed records are collected and raised together as one `DatasetError` after the last record.
    """
    path = Path(path)
    problems: list[tuple[int, str]] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in required if name not in header]
        if missing:
            raise DatasetError(str(path), [(1, f"missing column(s): {', '.join(missing)}")])
        while True:
            line = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                problems.append((line, f"unreadable CSV: {error}"))
                continue
            if not fields:
                continue
            if len(fields) != len(header):
                problems.append((line, f"expected {len(header)} fields, found {len(fields)}"))
                continue
            yield line, dict(zip(header, fields, strict=True))
    if problems:
        raise DatasetError(str(path), problems)


def load_pergdata_csv(path: str | Path, *, setting: Setting = "relevant") -> list[PreferenceItem]:
    """PERG cases from a CSV in the PERGData layout: `question`, `options` (a Python list literal),
    `gold_option` (see `parse_gold`), `preference`, optional `source` (default: the file's stem) and
    `category`. Item ids are `<file stem>-<line>`; every row becomes one case in `setting`.
    """
    path = Path(path)
    return parse_csv(path, PERGDATA_COLUMNS, lambda line, row: _pergdata_case(row, f"{path.stem}-{line}", path.stem, setting))


def parse_csv(path: str | Path, required: Sequence[str], parse: Callable[[int, dict[str, str]], T]) -> list[T]:
    """`parse(line, row)` over every row of a CSV file; every bad row (a `ValueError` from
    `parse`, or the file itself) is reported at once, with its line number."""
    parsed: list[T] = []
    problems: list[tuple[int, str]] = []
    try:
        for line, row in csv_rows(path, required):
            try:
                parsed.append(parse(line, row))
            except ValueError as error:
                problems.append((line, describe(error)))
    except DatasetError as error:
        problems.extend(error.problems)
    if problems:
        raise DatasetError(str(path), sorted(problems))
    return parsed


def _pergdata_case(row: dict[str, Any], item_id: str, default_source: str, setting: Setting) -> PreferenceItem:
    options = parse_options(row["options"])
    item = Item(
        id=item_id,
        source=row.get("source", "").strip() or default_source,
        category=row.get("category", "").strip() or None,
        question=row["question"].strip(),
        options=options,
        gold=parse_gold(row["gold_option"], options),
    )
    preference = row["preference"].strip()
    if not preference:
        raise ValueError("preference is empty")
    return PreferenceItem(item=item, setting=setting, preferences=(preference,))

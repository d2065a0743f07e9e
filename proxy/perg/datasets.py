"""Datasets: the `Item` and `PreferenceItem` models and the loaders.

Three sources: JSONL in the shared-data schema (`id`, `source`, `question`, `options`, `gold`,
optional `category`; other keys are ignored), the PERGData CSV layout, and the built-in sample
shipped as package data.

A file is loaded as it was released: a row that truly cannot be used (no options, a gold letter
out of range, an unreadable record) is skipped with its line number and reason, and the
`LoadSummary` says how many were (and which rows were kept with a note, such as repeated
options). `strict=True` refuses the file instead, with every bad row listed in one
`DatasetError`; so does a file none of whose rows can be used. No row is ever skipped silently
(a blank line is not a row). The built-in sample is always read strictly.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .cells import LETTERS, parse_gold, parse_options, repeated_options

T = TypeVar("T")

BUILTIN_DATASET = "builtin_mcq.jsonl"
ITEM_FIELDS = ("id", "source", "category", "question", "options", "gold")
PERGDATA_COLUMNS = ("question", "options", "gold_option", "preference")
Setting = Literal["relevant", "irrelevant", "mixed"]
SETTINGS: tuple[Setting, ...] = ("relevant", "irrelevant", "mixed")
PREFERENCE_CATEGORIES = ("context", "clarity", "thinking", "examples", "creative")
"""The paper's five kinds of preference (background and context; clarity and concision; ways of
thinking; examples and analogies; creativity and style)."""


class DatasetError(ValueError):
    """A dataset file has bad rows; `problems` holds every one as (line number, message)."""

    def __init__(self, name: str, problems: Sequence[tuple[int, str]]) -> None:
        self.name = name
        self.problems = tuple(problems)
        listing = "\n".join(f"  line {line}: {message}" for line, message in self.problems)
        super().__init__(f"{name}: {len(self.problems)} bad row(s)\n{listing}")


class Item(BaseModel):
    """One multiple-choice question. Options are lettered A, B, C … in order; `gold` is the right letter.
    An option may be written twice (released datasets have such rows): the letters tell them apart."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    category: str | None = None
    question: str = Field(min_length=1)
    options: tuple[str, ...] = Field(min_length=2, max_length=len(LETTERS))
    gold: str = Field(pattern=r"^[A-Z]$")

    @field_validator("options")
    @classmethod
    def _no_blank_options(cls, options: tuple[str, ...]) -> tuple[str, ...]:
        if any(not option.strip() for option in options):
            raise ValueError("options must not be blank")
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
    """One PERG case: an item asked under one preference setting, with the preferences sent.
    `preference_category` is the kind of its relevant preference, when the dataset says."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    item: Item
    setting: Setting
    preferences: tuple[str, ...] = Field(min_length=1)
    preference_category: str | None = None

    @property
    def relevant(self) -> bool:
        """PrefRel: some preference applies to the question (the relevant and mixed settings)."""
        return self.setting != "irrelevant"

    @property
    def key(self) -> str:
        return f"{self.item.id}/{self.setting}"


class LoadSummary(BaseModel):
    """What a loader did with a file: rows read, loaded, skipped (line, reason) and kept with a note."""

    model_config = ConfigDict(frozen=True)

    name: str
    rows: int
    loaded: int
    skipped: tuple[tuple[int, str], ...] = ()
    notes: tuple[tuple[int, str], ...] = ()

    def render(self, limit: int = 20) -> str:
        head = f"{self.name}: {self.rows} rows, {self.loaded} loaded, {len(self.skipped)} skipped"
        if self.notes:
            head += f", {len(self.notes)} kept with a note"
        lines = [head]
        lines += [f"  skipped line {line}: {reason}" for line, reason in self.skipped[:limit]]
        lines += [f"  kept line {line}: {note}" for line, note in self.notes[:limit]]
        hidden = max(0, len(self.skipped) - limit) + max(0, len(self.notes) - limit)
        if hidden:
            lines.append(f"  … and {hidden} more")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Loaded(Generic[T]):
    entries: list[T]
    summary: LoadSummary


class Rows(Generic[T]):
    """Collects parsed rows, skipped rows and notes while a loader reads a file."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.entries: list[T] = []
        self.skipped: list[tuple[int, str]] = []
        self.notes: list[tuple[int, str]] = []

    def finish(self, strict: bool) -> Loaded[T]:
        skipped = sorted(self.skipped)
        if skipped and (strict or not self.entries):
            raise DatasetError(self.name, skipped)
        rows = len(self.entries) + len(skipped)
        summary = LoadSummary(name=self.name, rows=rows, loaded=len(self.entries), skipped=tuple(skipped), notes=tuple(self.notes))
        return Loaded(self.entries, summary)


def describe(error: Exception) -> str:
    """One line for a bad row: pydantic errors as `field: message`, others as their message."""
    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in error.errors())
    return str(error)


def note_repeats(rows: Rows[Any], line: int, options: Sequence[str]) -> None:
    repeated = repeated_options(options)
    if repeated:
        rows.notes.append((line, "repeated option(s) " + ", ".join(repr(o) for o in repeated)))


def load_jsonl(path: str | Path, *, strict: bool = False) -> Loaded[Item]:
    """Items from a JSONL file in the shared-data schema."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        return parse_jsonl(handle, str(path), strict=strict)


def load_builtin() -> list[Item]:
    """The built-in sample written for this project (package data, no network, no shared files)."""
    text = (resources.files("proxy.perg") / "data" / BUILTIN_DATASET).read_text(encoding="utf-8")
    return parse_jsonl(text.splitlines(), BUILTIN_DATASET, strict=True).entries


def parse_jsonl(lines: Iterable[str], name: str, *, strict: bool = False) -> Loaded[Item]:
    """Items from JSONL lines; `name` labels the summary and errors. A repeated id is a bad row too."""
    rows: Rows[Item] = Rows(name)
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = _jsonl_item(line)
        except ValueError as error:
            rows.skipped.append((number, describe(error)))
            continue
        if item.id in seen:
            rows.skipped.append((number, f"duplicate id {item.id!r} (first on line {seen[item.id]})"))
            continue
        seen[item.id] = number
        note_repeats(rows, number, item.options)
        rows.entries.append(item)
    return rows.finish(strict)


def _jsonl_item(line: str) -> Item:
    row = json.loads(line)  # json.JSONDecodeError is a ValueError
    if not isinstance(row, dict):
        raise ValueError("a row must be a JSON object")
    return Item(**{key: row[key] for key in ITEM_FIELDS if key in row})


def csv_rows(path: str | Path, required: Sequence[str], bad: list[tuple[int, str]]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each CSV record, header checked; a record may span lines (quoted
    newlines). Malformed records go into `bad`; a missing column refuses the file at once."""
    path = Path(path)
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
                bad.append((line, f"unreadable CSV: {error}"))
                continue
            if not fields:
                continue
            if len(fields) != len(header):
                bad.append((line, f"expected {len(header)} fields, found {len(fields)}"))
                continue
            yield line, dict(zip(header, fields, strict=True))


def parse_csv(
    path: str | Path,
    required: Sequence[str],
    parse: Callable[[int, dict[str, str]], T],
    *,
    strict: bool = False,
    rows: Rows[T] | None = None,
) -> Loaded[T]:
    """`parse(line, row)` over every row of a CSV file; a row whose `parse` raises `ValueError` is
    skipped with its line number and reason (or, with `strict`, the file is refused)."""
    rows = rows if rows is not None else Rows(str(path))
    for line, row in csv_rows(path, required, rows.skipped):
        try:
            rows.entries.append(parse(line, row))
        except ValueError as error:
            rows.skipped.append((line, describe(error)))
    return rows.finish(strict)


def load_pergdata_csv(path: str | Path, *, setting: Setting = "relevant", strict: bool = False) -> Loaded[PreferenceItem]:
    """PERG cases from a CSV in the PERGData layout: `question`, `options` (a Python list literal or a
    numpy array repr), `gold_option` (see `parse_gold`), `preference`, optional `source` (default: the
    file's stem), `category` and `preference_category`. Item ids are `<file stem>-<line>`; every row
    becomes one case in `setting`."""
    path = Path(path)
    rows: Rows[PreferenceItem] = Rows(str(path))

    def parse(line: int, row: dict[str, str]) -> PreferenceItem:
        case = _pergdata_case(row, f"{path.stem}-{line}", path.stem, setting)
        note_repeats(rows, line, case.item.options)
        return case

    return parse_csv(path, PERGDATA_COLUMNS, parse, strict=strict, rows=rows)


def _pergdata_case(row: dict[str, Any], item_id: str, default_source: str, setting: Setting) -> PreferenceItem:
    options = parse_options(row["options"])
    if not options:
        raise ValueError("no options")
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
    category = row.get("preference_category", "").strip() or None
    return PreferenceItem(item=item, setting=setting, preferences=(preference,), preference_category=category)

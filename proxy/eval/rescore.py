"""Re-scoring published results: the PERG rates of a results CSV, in every layout the paper's
repository uses, and in the layout `eval run` writes.

Layouts (found from the header):
- full-run chunks: `no_pref_ans` / `pref_ans` letters, `no_pref_res` / `pref_res` raw answers;
- `_eval` files: `nopref_answer` / `pref_answer`, `nopref_res` / `pref_res`, and a follow column,
  `pref_eval_rating` (the judge's 1–5 score, followed when ≥ threshold) or `followed_pref`
  (true/false); the rating wins when both are there, so the threshold applies;
- aligner files: `aligner_answer` / `aligner_res` are the answers with preferences;
- per-dataset files: `profile_0_answer` (no preference) and `profile_1_answer … profile_k_answer`
  (one preference each), so each row is k cases, reported together and per profile.
Options are a Python list literal or a numpy array repr; `gold_option` is read by `parse_gold`.

Letter columns are read strictly (`read_letter_cell`): a letter of an existing option is that
letter; `-1`, empty, `None`, free text or an out-of-range letter is invalid, counted as wrong (the
paper's rule), and never goes through the free-text extractor. Without letter columns (or with
`answers="raw"`) the raw answers are read by the rules under a hedge policy (`read_by_rules`,
`hedges`), or by a `read_raw` given (`eval metrics --extractor rules+llm`: the rules, then an
LLM); `extraction` then counts the answers each path read. When the file also holds letter columns
for the same answers (the paper's chunks: `no_pref_ans` beside `no_pref_res`), the letters read are
compared with them: `agreement_with_letters` gives, per side and for both together, the share of
the answers whose file letter is valid that were read as that letter.

A relevant case with no follow verdict (an empty rating) is not followed, the paper's rule, and
counted in `n_follow_missing`. A row that cannot be used (no options, gold letter out of range)
is skipped with its line number and reason (`skipped`); `strict` refuses the file instead.

Output keys: `breakage_rate`, `alignment_failure_rate`, `robustness_error_rate`,
`performance_variation`, `n_q_star`, then the counts and the two-way BR (see `RescoreResult`).
Without a follow column `alignment_failure_rate` is omitted, and so is `robustness_error_rate` in
the relevant setting (it needs Followed); in the irrelevant setting Robust = Acc, so it is always
there. A rate over an empty Q* is None.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

from ..perg.cells import parse_gold, parse_options, read_letter_cell
from ..perg.datasets import DatasetError, LoadSummary, Rows, Setting, note_repeats, parse_csv
from ..perg.extract import Extraction, read_by_rules
from ..perg.hedges import HedgePolicy
from ..perg.rates import Record, point_rates, readable_breakage

QUESTION_COLUMNS = ("question", "options", "gold_option")
NOPREF_LETTERS = ("no_pref_ans", "nopref_answer", "profile_0_answer")
PREF_LETTERS = ("aligner_answer", "pref_ans", "pref_answer")
NOPREF_RAW = ("no_pref_res", "nopref_res", "profile_0_res")
PREF_RAW = ("aligner_res", "pref_res")
FOLLOW_COLUMNS = ("pref_eval_rating", "followed_pref")
RATE_KEYS = ("breakage_rate", "alignment_failure_rate", "robustness_error_rate", "performance_variation")
Answers = Literal["auto", "letters", "raw"]
RawReader = Callable[[str, Sequence[str], str], Extraction]
"""How a raw answer is read: (answer, options, question) to the letter and the path that found it."""
_PROFILE = re.compile(r"^profile_(\d+)_(answer|res)$")
_TRUE = {"true", "yes", "1", "1.0"}
_FALSE = {"false", "no", "0", "0.0"}
_MISSING = {"", "nan", "none", "null", "na"}


class Columns(NamedTuple):
    """Where the answers are: (profile, column) pairs with preferences, the one without, the kind."""

    nopref: str
    pref: tuple[tuple[str, str], ...]
    follow: str | None
    letters: bool


class ScoredRow(BaseModel):
    """The letters used for one case (None: invalid or unreadable), as `per_row` reports them."""

    model_config = ConfigDict(frozen=True)

    line: int
    profile: str = ""
    gold: str
    nopref: str | None
    pref: str | None
    followed: bool | None


def rescore(
    path: str | Path,
    setting: Setting = "relevant",
    per_row: bool = False,
    threshold: int = 3,
    *,
    answers: Answers = "auto",
    pref_column: str | None = None,
    strict: bool = False,
    hedges: HedgePolicy = "none",
    read_raw: RawReader | None = None,
) -> dict[str, Any]:
    """The PERG rates of a results CSV; `per_row` adds `rows`, the letters used, in input order.
    Raw answers are read by the rules under `hedges`, or by `read_raw` (the rules then an LLM)."""
    if not 1 <= threshold <= 5:
        raise ValueError("threshold must be between 1 and 5")
    columns = find_columns(path, answers, pref_column)
    required = [*QUESTION_COLUMNS, columns.nopref, *(c for _, c in columns.pref)]
    collected: Rows[list[ScoredRow]] = Rows(str(path))
    methods: Counter[str] = Counter()
    reader = read_raw or (lambda text, options, question: read_by_rules(text, options, hedges))
    stated = None if columns.letters else _letters_beside(path, columns, pref_column)
    agreement: Counter[str] = Counter()
    parser = _row_parser(columns, threshold, collected, _counting(reader, methods), stated, agreement)
    loaded = parse_csv(path, required, parser, strict=strict, rows=collected)
    rows = [case for cases in loaded.entries for case in cases]
    result = _rates(rows, setting, columns.follow is not None)
    result.update(_counts(rows, setting, columns, loaded.summary))
    if not columns.letters:
        result["extraction"] = {"hedges": hedges, "answers_by": dict(sorted(methods.items()))}
    if stated is not None:
        result["agreement_with_letters"] = _agreement(stated, agreement)
    profiles = sorted({row.profile for row in rows}, key=lambda p: int(p) if p.isdigit() else 0)
    if len(profiles) > 1:
        result["profiles"] = {p: _rates([r for r in rows if r.profile == p], setting, columns.follow is not None) for p in profiles}
    if per_row:
        result["rows"] = [row.model_dump(exclude={"profile"} if not row.profile else set()) for row in rows]
    return result


def find_columns(path: str | Path, answers: Answers = "auto", pref_column: str | None = None) -> Columns:
    """The answer and follow columns of a results file, from its header."""
    with Path(path).open(encoding="utf-8-sig", newline="") as handle:
        header = [name.strip() for name in next(csv.reader(handle), [])]
    follow = next((name for name in FOLLOW_COLUMNS if name in header), None)
    for letters, nopref_names, pref_names in ((True, NOPREF_LETTERS, PREF_LETTERS), (False, NOPREF_RAW, PREF_RAW)):
        if answers == ("raw" if letters else "letters"):
            continue
        nopref = next((name for name in nopref_names if name in header), None)
        kind = "answer" if letters else "res"
        pref: tuple[tuple[str, str], ...]
        if pref_column is not None:
            pref = (("", pref_column),) if pref_column in header else ()
        else:
            pref = _profiles(header, kind) or tuple(("", name) for name in pref_names if name in header)[:1]
        if nopref and pref:
            return Columns(nopref, pref, follow, letters)
    wanted = (
        f"column {pref_column!r}"
        if pref_column
        else "answer letters (no_pref_ans/nopref_answer/profile_0_answer and pref_ans/pref_answer/aligner_answer/profile_k_answer)"
    )
    message = f"needs {wanted} or raw answers (no_pref_res/nopref_res/profile_0_res and pref_res/aligner_res/profile_k_res)"
    raise DatasetError(str(path), [(1, message)])


def _letters_beside(path: str | Path, columns: Columns, pref_column: str | None) -> Columns | None:
    """The file's letter columns for the raw answers being read (the same profiles), if it has them."""
    if pref_column is not None:
        return None
    try:
        letters = find_columns(path, "letters")
    except DatasetError:
        return None
    same = [profile for profile, _ in letters.pref] == [profile for profile, _ in columns.pref]
    return letters if same else None


def _agreement(stated: Columns, counts: Counter[str]) -> dict[str, Any]:
    """How often the letters read agree with the file's own letters, over answers whose letter is valid."""
    sides = {side: (counts[f"{side} agree"], counts[f"{side} answers"]) for side in ("without", "with")}
    agree, answers = sum(a for a, _ in sides.values()), sum(n for _, n in sides.values())
    return {
        "columns": {"without": stated.nopref, "with": [column for _, column in stated.pref]},
        "answers": {side: n for side, (_, n) in sides.items()},
        **{side: a / n if n else None for side, (a, n) in sides.items()},
        "both": agree / answers if answers else None,
    }


def _profiles(header: Sequence[str], kind: str) -> tuple[tuple[str, str], ...]:
    found = sorted((int(m.group(1)), name) for name in header if (m := _PROFILE.match(name)) and m.group(2) == kind)
    return tuple((str(k), name) for k, name in found if k > 0)


def _counting(reader: RawReader, methods: Counter[str]) -> RawReader:
    def read(text: str, options: Sequence[str], question: str) -> Extraction:
        extraction = reader(text, options, question)
        methods[extraction.method] += 1
        return extraction

    return read


def _row_parser(
    columns: Columns, threshold: int, rows: Rows[list[ScoredRow]], read_raw: RawReader, stated: Columns | None, agreement: Counter[str]
) -> Any:
    def compare(side: str, read: str | None, cell: str, options: Sequence[str]) -> None:
        letter = read_letter_cell(cell, len(options))
        if letter is not None:
            agreement[f"{side} answers"] += 1
            agreement[f"{side} agree"] += read == letter

    def parse(line: int, row: dict[str, str]) -> list[ScoredRow]:
        options = parse_options(row["options"])
        if not options:
            raise ValueError("no options")
        note_repeats(rows, line, options)
        gold = parse_gold(row["gold_option"], options)
        question = row["question"]
        read = (
            (lambda cell: read_letter_cell(cell, len(options)))
            if columns.letters
            else (lambda cell: read_raw(cell, options, question).letter)
        )
        followed = _followed(row[columns.follow], columns.follow, threshold) if columns.follow else None
        nopref = read(row[columns.nopref])
        cases = [ScoredRow(line=line, profile=p, gold=gold, nopref=nopref, pref=read(row[c]), followed=followed) for p, c in columns.pref]
        if stated is not None:
            compare("without", nopref, row.get(stated.nopref, ""), options)
            for case, (_, column) in zip(cases, stated.pref, strict=True):
                compare("with", case.pref, row.get(column, ""), options)
        return cases

    return parse


def _followed(value: str, column: str, threshold: int) -> bool | None:
    """The follow verdict of a cell; None for an empty cell (no verdict: not followed, counted apart)."""
    text = value.strip().casefold()
    if text in _MISSING:
        return None
    if column == "followed_pref":
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ValueError(f"followed_pref {value!r} is not true/false")
    try:
        rating = float(text)
    except ValueError:
        raise ValueError(f"pref_eval_rating {value!r} is not a number") from None
    if not (math.isfinite(rating) and rating.is_integer() and 1 <= rating <= 5):
        raise ValueError(f"pref_eval_rating {value!r} is not a whole score from 1 to 5")
    return rating >= threshold


def _records(rows: Sequence[ScoredRow], setting: Setting) -> list[Record]:
    return [_record(row, setting) for row in rows]


def _record(row: ScoredRow, setting: Setting) -> Record:
    return Record(
        item_id=f"line-{row.line}/{row.profile}", setting=setting, relevant=setting != "irrelevant",
        correct_nopref=row.nopref == row.gold, correct_pref=row.pref == row.gold, followed=row.followed,
        extracted_nopref=row.nopref is not None, extracted_pref=row.pref is not None,
    )  # fmt: skip


def _rates(rows: Sequence[ScoredRow], setting: Setting, has_follow: bool) -> dict[str, Any]:
    rates = point_rates(_records(rows, setting))
    relevant = setting != "irrelevant"
    result: dict[str, Any] = {"breakage_rate": rates.breakage_rate}
    if has_follow:
        result["alignment_failure_rate"] = rates.alignment_failure_rate
    if has_follow or not relevant:
        result["robustness_error_rate"] = rates.robustness_error_rate
    result["performance_variation"] = rates.performance_variation
    result["n_q_star"] = sum(row.nopref == row.gold for row in rows)
    return result


def _counts(rows: Sequence[ScoredRow], setting: Setting, columns: Columns, summary: LoadSummary) -> dict[str, Any]:
    """Counts beside the rates: cases, missing verdicts, unreadable answers, BR two ways, skipped rows."""
    n = len(rows)
    readable, n_readable = readable_breakage(_records(rows, setting))
    return {
        "n_cases": n,
        "n_follow_missing": sum(row.nopref == row.gold and row.followed is None for row in rows) if columns.follow and setting != "irrelevant" else 0,
        "unreadable_nopref": sum(row.nopref is None for row in rows) / n if n else None,
        "unreadable_pref": sum(row.pref is None for row in rows) / n if n else None,
        "breakage_rate_readable": readable,
        "n_q_star_readable": n_readable,
        "columns": {"without": columns.nopref, "with": [c for _, c in columns.pref], "follow": columns.follow,
                    "read_as": "letters" if columns.letters else "raw answers"},
        "load": summary.model_dump(mode="json"),
    }  # fmt: skip

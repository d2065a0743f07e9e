"""Per-case results of a benchmark run, and the files that keep them.

`results.jsonl` holds one `CaseResult` per item × strategy × setting: the answers with and without
preferences, the letters read from them and how, the aligner's outcome, the follow verdict, and any
error. `results/<strategy>-<setting>.csv` holds the same cases in the paper's column layout, so
`perg-proxy eval metrics --results` re-scores any cell of the report from its raw material.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..perg.datasets import Setting
from ..perg.rates import Record

CSV_COLUMNS = (
    "question",
    "options",
    "gold_option",
    "preference",
    "no_pref_res",
    "no_pref_ans",
    "pref_res",
    "pref_ans",
    "pref_eval_rating",
    "item_id",
    "source",
    "category",
    "preference_category",
    "strategy",
    "setting",
    "aligned",
)


class CaseResult(BaseModel):
    """One case of a run. An answer that could not be obtained is None, with the reason in `errors`;
    such a case has no record and stays out of every metric (it is counted apart)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    item_id: str
    source: str
    category: str | None = None
    setting: Setting
    strategy: str
    relevant: bool
    question: str
    options: tuple[str, ...]
    gold: str
    preferences: tuple[str, ...]
    judged_preferences: tuple[str, ...] = ()
    preference_category: str | None = None
    nopref_answer: str | None = None
    nopref_letter: str | None = None
    nopref_extraction: str = "none"
    pref_answer: str | None = None
    pref_letter: str | None = None
    pref_extraction: str = "none"
    aligned: str | None = None
    fallback_reason: str | None = None
    follow_score: int | None = Field(None, ge=1, le=5)
    follow_reason: str | None = None
    errors: dict[str, str] = Field(default_factory=dict)

    @property
    def answered(self) -> bool:
        return self.nopref_answer is not None and self.pref_answer is not None

    def record(self, threshold: int) -> Record | None:
        """The case as the metrics see it; None when an answer is missing. A relevant case without
        a follow score (the judge failed) has `followed` None: not followed, and counted apart."""
        if not self.answered:
            return None
        followed = None if self.follow_score is None or not self.relevant else self.follow_score >= threshold
        return Record(
            item_id=self.item_id,
            strategy=self.strategy,
            setting=self.setting,
            source=self.source,
            category=self.category,
            relevant=self.relevant,
            correct_nopref=self.nopref_letter == self.gold,
            correct_pref=self.pref_letter == self.gold,
            followed=followed,
            follow_score=self.follow_score if self.relevant else None,
            preference_category=self.preference_category,
            extracted_nopref=self.nopref_letter is not None,
            extracted_pref=self.pref_letter is not None,
        )


def write_results(results: Sequence[CaseResult], out: Path) -> list[Path]:
    """`results.jsonl` and one paper-layout CSV per strategy × setting (answered cases only)."""
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "results.jsonl"
    with jsonl.open("w", encoding="utf-8") as handle:
        for result in results:
            handle.write(result.model_dump_json() + "\n")
    written = [jsonl]
    cells: dict[tuple[str, str], list[CaseResult]] = {}
    for result in results:
        cells.setdefault((result.strategy, result.setting), []).append(result)
    folder = out / "results"
    folder.mkdir(exist_ok=True)
    for (strategy, setting), rows in cells.items():
        path = folder / f"{strategy}-{setting}.csv"
        _write_csv(path, (row for row in rows if row.answered))
        written.append(path)
    return written


def _write_csv(path: Path, rows: Iterable[CaseResult]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow(
                [
                    r.question,
                    repr(list(r.options)),
                    r.gold,
                    "\n".join(r.preferences),
                    r.nopref_answer,
                    r.nopref_letter or "",
                    r.pref_answer,
                    r.pref_letter or "",
                    r.follow_score if r.follow_score is not None and r.relevant else "",
                    r.item_id,
                    r.source,
                    r.category or "",
                    r.preference_category or "",
                    r.strategy,
                    r.setting,
                    r.aligned or "",
                ]
            )


def load_results(path: Path) -> list[CaseResult]:
    """The cases of a `results.jsonl`."""
    with path.open(encoding="utf-8") as handle:
        return [CaseResult.model_validate(json.loads(line)) for line in handle if line.strip()]

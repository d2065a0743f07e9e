"""What a benchmark run asks: the items, each with its cases (one per preference setting) and the
relevant preference the follow judge sees.

Datasets: `builtin`, a JSONL file in the shared-data schema, or a CSV in the PERGData layout. JSONL
and built-in items get their style preference from the pool (`cases.build_cases`); a PERGData row
brings its own preference, which plays the style preference's part: the relevant setting asks
with it alone, mixed inserts it among unrelated preferences from the pool, and irrelevant uses the
pool's unrelated preferences only (under the paper's protocol: its five fixed irrelevant
preferences, the relevant one in their middle for mixed). A PERGData row's `preference_category`
travels with its cases; a pool's style preference brings its own. `--limit N` keeps N items
chosen by a seeded shuffle (so a small run spans the categories, and a larger limit with the same
seed contains a smaller one), in dataset order. Rows that cannot be used are skipped and listed
in the `LoadSummary` (`strict` refuses the file instead).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..perg.cases import CasePreference, PreferencePool, build_cases, load_preferences
from ..perg.datasets import Item, LoadSummary, PreferenceItem, Setting, load_builtin, load_jsonl, load_pergdata_csv
from ..perg.stats import derive_seed

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Unit:
    """One item and its cases; `style` is its relevant preference (in the relevant and mixed cases)."""

    item: Item
    cases: tuple[PreferenceItem, ...]
    style: str

    def judged_preferences(self, case: PreferenceItem) -> tuple[str, ...]:
        """What the follow judge is asked about: the relevant preference, as in the paper."""
        return (self.style,) if case.relevant else ()


@dataclass(frozen=True, slots=True)
class Layout:
    """How the preference settings are built: the pool's random unrelated preferences, or fixed ones."""

    seed: int = 0
    n_unrelated: int = 3
    irrelevant: tuple[str, ...] | None = None


def load_units(
    dataset: str,
    settings: Sequence[Setting],
    *,
    preferences: Path | None = None,
    seed: int = 0,
    n_unrelated: int = 3,
    limit: int | None = None,
    irrelevant: tuple[str, ...] | None = None,
    strict: bool = False,
    summaries: list[LoadSummary] | None = None,
) -> list[Unit]:
    """The units of a run; the dataset's `LoadSummary` is appended to `summaries` when given."""
    pool = load_preferences(preferences)
    layout = Layout(seed, n_unrelated, irrelevant)
    if dataset == "builtin":
        return _item_units(select(load_builtin(), limit, seed), pool, settings, layout)
    if dataset.lower().endswith(".csv"):
        loaded = load_pergdata_csv(dataset, strict=strict)
        if summaries is not None:
            summaries.append(loaded.summary)
        return [_row_unit(row, pool, settings, layout) for row in select(loaded.entries, limit, seed)]
    items = load_jsonl(dataset, strict=strict)
    if summaries is not None:
        summaries.append(items.summary)
    return _item_units(select(items.entries, limit, seed), pool, settings, layout)


def dataset_name(dataset: str) -> str:
    return "built-in sample" if dataset == "builtin" else Path(dataset).name


def select(entries: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """The first `limit` entries of a seeded shuffle, in their original order (all of them without a limit)."""
    if limit is None or limit >= len(entries):
        return list(entries)
    order = list(range(len(entries)))
    random.Random(derive_seed(seed, "limit")).shuffle(order)
    return [entries[index] for index in sorted(order[:limit])]


def _cases(items: list[Item], pool: PreferencePool, settings: Sequence[Setting], layout: Layout) -> list[PreferenceItem]:
    return build_cases(items, pool, settings, seed=layout.seed, n_unrelated=layout.n_unrelated, irrelevant=layout.irrelevant)


def _item_units(items: list[Item], pool: PreferencePool, settings: Sequence[Setting], layout: Layout) -> list[Unit]:
    styles = {case.item.id: case.preferences[0] for case in _cases(items, pool, ("relevant",), layout)}
    cases: dict[str, list[PreferenceItem]] = {}
    for case in _cases(items, pool, settings, layout):
        cases.setdefault(case.item.id, []).append(case)
    return [Unit(item, tuple(cases.get(item.id, ())), styles[item.id]) for item in items]


def _row_unit(row: PreferenceItem, pool: PreferencePool, settings: Sequence[Setting], layout: Layout) -> Unit:
    style = row.preferences[0]
    own = PreferencePool(style=(CasePreference(id="row", text=style),), unrelated=pool.unrelated)
    cases = [case.model_copy(update={"preference_category": row.preference_category}) if case.relevant else case
             for case in _cases([row.item], own, settings, layout)]  # fmt: skip
    return Unit(row.item, tuple(cases), style)

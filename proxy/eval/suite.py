"""What a benchmark run asks: the items, each with its cases (one per preference setting) and the
relevant preference the follow judge sees.

Datasets: `builtin`, a JSONL file in the shared-data schema, or a CSV in the PERGData layout. JSONL
and built-in items get their style preference from the pool (`cases.build_cases`); a PERGData row
brings its own preference, which plays the style preference's part: the relevant setting asks
with it alone, mixed inserts it among unrelated preferences from the pool, and irrelevant uses the
pool's unrelated preferences only. `--limit N` keeps N items chosen by a seeded shuffle (so a small
run spans the categories, and a larger limit with the same seed contains a smaller one), in dataset
order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..perg.cases import CasePreference, PreferencePool, build_cases, load_preferences
from ..perg.datasets import Item, PreferenceItem, Setting, load_builtin, load_jsonl, load_pergdata_csv
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


def load_units(
    dataset: str,
    settings: Sequence[Setting],
    *,
    preferences: Path | None = None,
    seed: int = 0,
    n_unrelated: int = 3,
    limit: int | None = None,
) -> list[Unit]:
    pool = load_preferences(preferences)
    if dataset == "builtin":
        return _item_units(select(load_builtin(), limit, seed), pool, settings, seed, n_unrelated)
    if dataset.lower().endswith(".csv"):
        rows = select(load_pergdata_csv(dataset), limit, seed)
        return [_row_unit(row, pool, settings, seed, n_unrelated) for row in rows]
    return _item_units(select(load_jsonl(dataset), limit, seed), pool, settings, seed, n_unrelated)


def dataset_name(dataset: str) -> str:
    return "built-in sample" if dataset == "builtin" else Path(dataset).name


def select(entries: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """The first `limit` entries of a seeded shuffle, in their original order (all of them without a limit)."""
    if limit is None or limit >= len(entries):
        return list(entries)
    order = list(range(len(entries)))
    random.Random(derive_seed(seed, "limit")).shuffle(order)
    return [entries[index] for index in sorted(order[:limit])]


def _item_units(items: list[Item], pool: PreferencePool, settings: Sequence[Setting], seed: int, n_unrelated: int) -> list[Unit]:
    styles = {case.item.id: case.preferences[0] for case in build_cases(items, pool, ("relevant",), seed=seed, n_unrelated=n_unrelated)}
    cases: dict[str, list[PreferenceItem]] = {}
    for case in build_cases(items, pool, settings, seed=seed, n_unrelated=n_unrelated):
        cases.setdefault(case.item.id, []).append(case)
    return [Unit(item, tuple(cases.get(item.id, ())), styles[item.id]) for item in items]


def _row_unit(row: PreferenceItem, pool: PreferencePool, settings: Sequence[Setting], seed: int, n_unrelated: int) -> Unit:
    style = row.preferences[0]
    own = PreferencePool(style=(CasePreference(id="row", text=style),), unrelated=pool.unrelated)
    return Unit(row.item, tuple(build_cases([row.item], own, settings, seed=seed, n_unrelated=n_unrelated)), style)

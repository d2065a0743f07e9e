"""The benchmark's result: metrics of every strategy × setting × group, and paired McNemar tests
between strategies. What the report writer renders and `report.json` holds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import combinations

from pydantic import BaseModel, ConfigDict

from ..perg.rates import GroupMetrics, Record, group_metrics, grouped
from ..perg.stats import mcnemar_exact


class PairedTest(BaseModel):
    """Exact McNemar test on accuracy with preferences, two strategies, same setting, paired by item."""

    model_config = ConfigDict(frozen=True)

    setting: str
    strategy_a: str
    strategy_b: str
    n_pairs: int
    accuracy_a: float | None
    accuracy_b: float | None
    only_a_correct: int
    only_b_correct: int
    p_value: float


class Summary(BaseModel):
    model_config = ConfigDict(frozen=True)

    groups: tuple[GroupMetrics, ...]
    paired: tuple[PairedTest, ...]
    resamples: int
    seed: int
    level: float

    def overall(self) -> list[GroupMetrics]:
        """The "all" group of each strategy × setting."""
        return [g for g in self.groups if g.dimension == "all"]


def paired_test(records_a: Sequence[Record], records_b: Sequence[Record]) -> PairedTest:
    """McNemar between two strategies' records of one setting; items present in only one are left out."""
    by_item_a, by_item_b = _by_item(records_a), _by_item(records_b)
    shared = sorted(by_item_a.keys() & by_item_b.keys())
    pairs = [(by_item_a[i].correct_pref, by_item_b[i].correct_pref) for i in shared]
    only_a = sum(a and not b for a, b in pairs)
    only_b = sum(b and not a for a, b in pairs)
    first_a, first_b = records_a[0], records_b[0]
    return PairedTest(
        setting=first_a.setting,
        strategy_a=first_a.strategy,
        strategy_b=first_b.strategy,
        n_pairs=len(pairs),
        accuracy_a=sum(a for a, _ in pairs) / len(pairs) if pairs else None,
        accuracy_b=sum(b for _, b in pairs) / len(pairs) if pairs else None,
        only_a_correct=only_a,
        only_b_correct=only_b,
        p_value=mcnemar_exact(only_a, only_b),
    )


def _by_item(records: Sequence[Record]) -> dict[str, Record]:
    if len({(r.strategy, r.setting) for r in records}) > 1:
        raise ValueError("paired_test needs the records of one strategy and one setting")
    by_item = {r.item_id: r for r in records}
    if len(by_item) != len(records):
        raise ValueError("an item appears twice for the same strategy and setting")
    return by_item


def summarize(records: Iterable[Record], *, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> Summary:
    """Metrics with `level` percentile-bootstrap intervals per strategy × setting × source / category,
    and a McNemar test for each pair of strategies within each setting."""
    records = list(records)
    groups = grouped(records)
    overall = {(s, t): rs for (s, t, dimension, _), rs in groups.items() if dimension == "all"}
    for cell in overall.values():
        _by_item(cell)  # rejects duplicates before any figure is computed
    metrics = tuple(group_metrics(rs, key, resamples=resamples, seed=seed, level=level) for key, rs in groups.items())
    return Summary(groups=metrics, paired=_paired(overall), resamples=resamples, seed=seed, level=level)


def _paired(overall: dict[tuple[str, str], list[Record]]) -> tuple[PairedTest, ...]:
    tests = []
    settings = list(dict.fromkeys(setting for _, setting in overall))
    for setting in settings:
        strategies = [s for s, t in overall if t == setting]
        for a, b in combinations(strategies, 2):
            tests.append(paired_test(overall[(a, setting)], overall[(b, setting)]))
    return tuple(tests)

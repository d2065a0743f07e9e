"""`CanaryHistory`: the canary's counter totals after each run, kept in this process, so the
operator page can chart the canary's exact figures over time.

Each snapshot sums the `perg_canary_*` counters of the registry over their labels, right after a
run: the difference between two snapshots is what the runs between them counted, by the very
rules that count the metrics (no second copy of them here). Bounded: the newest `keep` snapshots.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry

from ..metrics import metric_samples
from ..preferences.models import utcnow

CANARY_COUNTS: dict[str, tuple[str, dict[str, str]]] = {
    "probes": ("perg_canary_probes_total", {}),
    "correct_without": ("perg_canary_correct_total", {"condition": "without_preferences"}),
    "correct_with": ("perg_canary_correct_total", {"condition": "with_preferences"}),
    "both_correct": ("perg_canary_both_correct_total", {}),
    "either_correct": ("perg_canary_either_correct_total", {}),
    "broken": ("perg_canary_broken_total", {}),
    "not_followed": ("perg_canary_not_followed_total", {}),
    "not_robust": ("perg_canary_not_robust_total", {}),
}
"""Each canary count: the sample it is read from, and the labels it must carry."""


def canary_counts(registry: CollectorRegistry) -> dict[tuple[str, str, str], dict[str, int]]:
    """The canary counts per (model, strategy, setting) in this process's registry."""
    groups: dict[tuple[str, str, str], dict[str, int]] = {}
    for field, (name, wanted) in CANARY_COUNTS.items():
        for labels, value in metric_samples(registry, name):
            if all(labels.get(key) == expected for key, expected in wanted.items()):
                key = (labels["model"], labels["strategy"], labels["setting"])
                row = groups.setdefault(key, dict.fromkeys(CANARY_COUNTS, 0))
                row[field] += int(value)
    return groups


def total(rows: Sequence[dict[str, int]]) -> dict[str, int]:
    return {field: sum(row[field] for row in rows) for field in CANARY_COUNTS}


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: datetime
    counts: dict[str, int]


class CanaryHistory:
    def __init__(self, registry: CollectorRegistry, keep: int = 4096) -> None:
        self._registry = registry
        self._snapshots: deque[Snapshot] = deque(maxlen=keep)
        self.snapshot()  # the counts before the first run

    def snapshot(self) -> None:
        self._snapshots.append(Snapshot(utcnow(), total(list(canary_counts(self._registry).values()))))

    def buckets(self, since: datetime, width: timedelta, buckets: int) -> list[dict[str, int] | None]:
        """What the runs counted in each of `buckets` buckets of `width` from `since`: the last
        snapshot in the bucket minus the last one before it (or the first one kept); None for a
        bucket in which no run ended."""
        snapshots = list(self._snapshots)
        times = [snapshot.at for snapshot in snapshots]
        result: list[dict[str, int] | None] = []
        for index in range(buckets):
            first = bisect.bisect_left(times, since + width * index)
            last = bisect.bisect_left(times, since + width * (index + 1)) - 1
            base = first - 1 if first > 0 else first
            if last < first or last == base:
                result.append(None)
                continue
            end, start = snapshots[last].counts, snapshots[base].counts
            result.append({field: end[field] - start[field] for field in CANARY_COUNTS})
        return result

"""The figures the operator page shows, computed from counts: rates with their 95% Wilson
intervals (server-side, so every client shows the same), the canary's exact rates, and this
process's monitor and aligner counters read from its Prometheus registry.

A rate over n samples is `k / n`; its interval is `perg.stats.wilson_interval(k, n)`, None when
n is 0. The live rates' n is the comparable judged samples (judged minus `cannot_compare`, as in
DESIGN.md "Online adaptation"); the canary's BR / AFR / RER have n = the items right without
preferences (Q*), its accuracies n = the items probed, its PVR n = the items right either way.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from ..metrics import metric_samples
from ..perg.stats import wilson_interval
from ..preferences.models import SampleCounts
from .canary_history import canary_counts, total

LIVE_RATES = {"breakage_rate": "broken", "alignment_failure_rate": "not_followed", "robustness_error_rate": "not_robust"}


def interval(successes: int, n: int) -> list[float] | None:
    found = wilson_interval(successes, n) if n > 0 else None
    return list(found) if found is not None else None


def rate_intervals(counts: SampleCounts) -> dict[str, list[float] | None]:
    """`<rate>_interval` for BR, AFR and RER of one group's counts."""
    comparable = counts.judged - counts.uncomparable
    return {f"{rate}_interval": interval(getattr(counts, field), comparable) for rate, field in LIVE_RATES.items()}


def canary_figures(counts: dict[str, int]) -> dict[str, Any]:
    """The canary's exact figures from its counts (see the module docstring for each n)."""
    q_star, probes, either = counts["correct_without"], counts["probes"], counts["either_correct"]
    rates: dict[str, tuple[int, int]] = {
        "accuracy_without_preferences": (counts["correct_without"], probes),
        "accuracy_with_preferences": (counts["correct_with"], probes),
        "breakage_rate": (counts["broken"], q_star),
        "alignment_failure_rate": (counts["not_followed"], q_star),
        "robustness_error_rate": (counts["not_robust"], q_star),
        "performance_variation": (either - counts["both_correct"], either),
    }
    figures: dict[str, Any] = dict(counts)
    for name, (k, n) in rates.items():
        figures[name] = k / n if n > 0 else None
        figures[f"{name}_interval"] = interval(k, n)
    return figures


def canary_groups(registry: CollectorRegistry) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The canary's figures per (model, strategy, setting) since this process started, and over all."""
    found = canary_counts(registry)
    groups = [
        {"model": model, "strategy": strategy, "setting": setting, **canary_figures(counts)}
        for (model, strategy, setting), counts in sorted(found.items())
    ]
    return groups, canary_figures(total(list(found.values())))


def labelled(registry: CollectorRegistry, name: str, *labels: str) -> list[dict[str, Any]]:
    """One row per label set of a counter: the labels named, and `count`."""
    rows = [{**{label: values.get(label, "") for label in labels}, "count": int(value)} for values, value in metric_samples(registry, name)]
    return sorted(rows, key=lambda row: [row[label] for label in labels])


def by_label(registry: CollectorRegistry, name: str, label: str) -> dict[str, int]:
    return {row[label]: row["count"] for row in labelled(registry, name, label)}


def process_figures(registry: CollectorRegistry) -> dict[str, Any]:
    """The monitor queue's and the aligner's counters of this process."""
    return {
        "enqueued": by_label(registry, "perg_monitor_enqueued_total", "role"),
        "dropped": by_label(registry, "perg_monitor_dropped_total", "reason"),
        "judge_errors": labelled(registry, "perg_monitor_judge_errors_total", "judge", "reason"),
        "verdicts_missing": by_label(registry, "perg_monitor_verdicts_missing_total", "judge"),
        "aligner": labelled(registry, "perg_aligner_outcomes_total", "strategy", "outcome"),
        "fallbacks": by_label(registry, "perg_aligner_fallbacks_total", "reason"),
        "gate": by_label(registry, "perg_gate_outcomes_total", "outcome"),
        "canary_errors": by_label(registry, "perg_canary_errors_total", "reason"),
    }

"""Every Prometheus metric of the proxy, on an injected registry.

Counters and histograms only (plus gauges for levels); ratios are computed in PromQL so that
replicas add up. Labels are bounded: routes and strategies are fixed sets, and model names, which
clients choose, pass through `BoundedLabel`, which folds everything past a fixed number of distinct
values into "other". No user id or free text is ever a label value.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class BoundedLabel:
    """Maps free label values to at most `limit` distinct ones; later newcomers become "other"."""

    def __init__(self, limit: int = 50) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if not value:
            return "unknown"
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value[:100])
                return value[:100]
        return "other"


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition: this registry's, or with `--workers` (PROMETHEUS_MULTIPROC_DIR set)
    the sum over every worker process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)
        return generate_latest(combined)
    return generate_latest(registry)


class Metrics:
    """The proxy's metrics. `child()` is `metric.labels(...)` with the result kept, for the hot
    path (labels are bounded, so the cache is too)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.model_label = BoundedLabel()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter("perg_requests", "Client requests handled.", ["route", "method", "status", "strategy"], registry=r)
        self.request_duration = Histogram(
            "perg_request_duration_seconds",
            "Client request duration, first byte in to last byte out.",
            ["route", "strategy"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "perg_overhead_seconds",
            "Time spent in the proxy itself for a request, upstream waits excluded.",
            ["route", "strategy"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "perg_upstream_duration_seconds",
            "Upstream call duration (gen_ai.client.operation.duration), by pipeline stage.",
            ["upstream", "stage", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "perg_time_to_first_token_seconds",
            "Streaming requests: time from request in to the first content chunk out.",
            ["strategy"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "perg_tokens",
            "Tokens reported by upstream usage (gen_ai.client.token.usage), by stage and type.",
            ["model", "stage", "type"],
            registry=r,
        )
        self.in_flight = Gauge(
            "perg_requests_in_flight",
            "Client requests being handled now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.stream_errors = Counter(
            "perg_stream_errors",
            "Streams that ended with an in-band error event, by cause.",
            ["cause"],
            registry=r,
        )
        self.aligner_outcomes = Counter(
            "perg_aligner_outcomes",
            "Chat requests by personalization outcome.",
            ["strategy", "outcome"],
            registry=r,
        )
        self.gate_outcomes = Counter(
            "perg_gate_outcomes",
            "Relevance gate decisions: relevant, irrelevant, unparseable or error (both fail open).",
            ["outcome"],
            registry=r,
        )
        self.profile_errors = Counter(
            "perg_profile_lookup_errors",
            "Requests answered without stored preferences because the profile store failed.",
            ["reason"],
            registry=r,
        )
        self.rate_limited = Counter("perg_rate_limited", "Requests refused by a per-key rate limit.", ["kind"], registry=r)
        self.rate_limit_errors = Counter(
            "perg_rate_limit_errors", "Rate-limit checks skipped because the shared counter failed.", ["reason"], registry=r
        )
        # online PERG monitor (issue: monitor); labels model, strategy, role, relevance
        monitor_labels = ["model", "strategy", "role", "relevance"]
        self.monitor_judged = Counter("perg_monitor_judged", "Samples judged (consistency verdict comparable).", monitor_labels, registry=r)
        self.monitor_broken = Counter(
            "perg_monitor_broken", "Judged samples whose answer contradicts the reference.", monitor_labels, registry=r
        )
        self.monitor_not_followed = Counter(
            "perg_monitor_not_followed",
            "Judged samples with a relevant preference whose follow score is under the threshold.",
            monitor_labels,
            registry=r,
        )
        self.monitor_not_robust = Counter(
            "perg_monitor_not_robust", "Judged samples that are broken, or relevant and not followed.", monitor_labels, registry=r
        )
        self.monitor_uncomparable = Counter(
            "perg_monitor_uncomparable",
            "Samples the consistency judge could not compare (excluded from the ratios).",
            monitor_labels,
            registry=r,
        )
        self.monitor_follow_score = Histogram(
            "perg_monitor_follow_score",
            "Likert follow scores (1-5) of samples with a relevant preference.",
            ["model", "strategy", "role"],
            buckets=(1, 2, 3, 4, 5),
            registry=r,
        )
        self.monitor_queue_depth = Gauge(
            "perg_monitor_queue_depth", "Samples waiting for the monitor's workers.", registry=r, multiprocess_mode="livesum"
        )
        self.monitor_enqueued = Counter("perg_monitor_enqueued", "Samples put on the monitor queue.", ["role"], registry=r)
        self.monitor_dropped = Counter(
            "perg_monitor_dropped", "Samples dropped: queue full, or abandoned at shutdown.", ["reason"], registry=r
        )
        self.monitor_judge_errors = Counter(
            "perg_monitor_judge_errors", "Judge calls that failed or returned an invalid verdict.", ["judge", "reason"], registry=r
        )
        self.monitor_judge_duration = Histogram(
            "perg_monitor_judge_duration_seconds", "Judge call duration, retries included.", ["judge"], buckets=LATENCY_BUCKETS, registry=r
        )
        # canary probes: labelled items through the served pipeline, with and without preferences
        canary_labels = ["model", "strategy", "setting"]
        self.canary_probes = Counter("perg_canary_probes", "Canary items probed (with and without preferences).", canary_labels, registry=r)
        self.canary_correct = Counter(
            "perg_canary_correct",
            "Canary answers equal to the gold letter, by condition (with_preferences | without_preferences).",
            [*canary_labels, "condition"],
            registry=r,
        )
        self.canary_broken = Counter(
            "perg_canary_broken", "Canary items right without preferences and wrong with them.", canary_labels, registry=r
        )
        self.canary_not_followed = Counter(
            "perg_canary_not_followed",
            "Canary items right without preferences whose relevant preference was not followed.",
            canary_labels,
            registry=r,
        )
        self.canary_not_robust = Counter(
            "perg_canary_not_robust", "Canary items right without preferences and not robust with them.", canary_labels, registry=r
        )
        self.canary_both_correct = Counter(
            "perg_canary_both_correct", "Canary items right both with and without preferences.", canary_labels, registry=r
        )
        self.canary_either_correct = Counter(
            "perg_canary_either_correct", "Canary items right with or without preferences (PVR denominator).", canary_labels, registry=r
        )
        self.canary_errors = Counter("perg_canary_errors", "Canary probes that failed.", ["reason"], registry=r)

    def child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found


def private_metrics() -> Metrics:
    """A registry nobody scrapes: the monitor's own pipeline runs count there, not in /metrics."""
    return Metrics(CollectorRegistry())

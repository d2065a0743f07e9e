"""Every Prometheus metric of the proxy, on an injected registry.

Counters and histograms only (plus gauges for levels); ratios are computed in PromQL so that
replicas add up. Labels are bounded: routes and strategies are fixed sets, and model names, which
clients choose, pass through `BoundedLabel`, which folds everything past a fixed number of distinct
values into "other". No user id or free text is ever a label value.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Literal

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


@dataclass(frozen=True)
class Declared:
    """One metric as declared here: what `python -m proxy.metrics_doc` writes into docs/metrics.md.
    `name` is the exposed name (counters with `_total`); `semconv` the OpenTelemetry GenAI
    semantic-convention metric it corresponds to, or "" where none does."""

    name: str
    kind: str
    labels: tuple[str, ...]
    help: str
    unit: str
    semconv: str


class Metrics:
    """The proxy's metrics. `child()` is `metric.labels(...)` with the result kept, for the hot
    path (labels are bounded, so the cache is too)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.model_label = BoundedLabel()
        self.fallback_reason = BoundedLabel(20)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._request_children: dict[tuple[str, str, int, str], tuple[Any, Any, Any]] = {}
        self.declared: list[Declared] = []
        self.requests = self._counter("perg_requests", "Client requests handled.", ("route", "method", "status", "strategy"))
        self.request_duration = self._histogram(
            "perg_request_duration_seconds",
            "Client request duration, first byte in to last byte out.",
            ("route", "strategy"),
            semconv="gen_ai.server.request.duration",
        )
        self.overhead = self._histogram(
            "perg_overhead_seconds",
            "Time spent in the proxy itself for a request, upstream waits excluded.",
            ("route", "strategy"),
            buckets=OVERHEAD_BUCKETS,
        )
        self.upstream_duration = self._histogram(
            "perg_upstream_duration_seconds",
            "Upstream call duration, by pipeline stage.",
            ("upstream", "stage", "outcome"),
            semconv="gen_ai.client.inference.duration",
        )
        self.ttft = self._histogram(
            "perg_time_to_first_token_seconds",
            "Streaming requests: time from request in to the first content chunk out.",
            ("strategy",),
            semconv="gen_ai.server.time_to_first_token",
        )
        self.tokens = self._counter(
            "perg_tokens",
            "Tokens reported by upstream usage, by stage and type (input, output).",
            ("model", "stage", "type"),
            unit="{token}",
            semconv="gen_ai.client.inference.usage.input_tokens, gen_ai.client.inference.usage.output_tokens",
        )
        self.in_flight = self._gauge("perg_requests_in_flight", "Client requests being handled now.", unit="{request}")
        self.connections_refused = self._counter(
            "perg_connections_refused",
            "Client connections closed by the proxy: over server.max_connections (limit) or headers too slow (header_timeout).",
            ("reason",),
        )
        self.stream_errors = self._counter("perg_stream_errors", "Streams that ended with an in-band error event, by cause.", ("cause",))
        self.aligner_outcomes = self._counter("perg_aligner_outcomes", "Chat requests by personalization outcome.", ("strategy", "outcome"))
        self.aligner_fallbacks = self._counter(
            "perg_aligner_fallbacks",
            "Pref-Aligner choices served as the stage-1 draft, by reason (an error code or a failed check).",
            ("reason",),
        )
        self.gate_outcomes = self._counter(
            "perg_gate_outcomes",
            "Relevance gate decisions: relevant, irrelevant, or failed_open (an error or an unreadable reply: every preference counts).",
            ("outcome",),
        )
        self.profile_errors = self._counter(
            "perg_profile_lookup_errors",
            "Requests answered without stored preferences because the profile store failed.",
            ("reason",),
        )
        self.personalization_unsupported = self._counter(
            "perg_personalization_unsupported",
            "Requests that asked for personalization (preferences in the body extension or a header, or a named user with a "
            "stored profile) on a route that cannot honour it: answered unpersonalized with x-perg-aligned: unsupported.",
            ("endpoint", "source"),
        )
        self.rate_limited = self._counter("perg_rate_limited", "Requests refused by a per-key rate limit.", ("kind",))
        self.rate_limit_errors = self._counter(
            "perg_rate_limit_errors", "Rate-limit checks skipped because the shared counter failed.", ("reason",)
        )
        # online PERG monitor (issue: monitor); labels model, strategy, role, relevance
        monitor_labels = ("model", "strategy", "role", "relevance")
        self.monitor_judged = self._counter("perg_monitor_judged", "Samples judged (consistency verdict comparable).", monitor_labels)
        self.monitor_broken = self._counter("perg_monitor_broken", "Judged samples whose answer contradicts the reference.", monitor_labels)
        self.monitor_not_followed = self._counter(
            "perg_monitor_not_followed",
            "Judged samples with a relevant preference whose follow score is under the threshold or missing (judge failed).",
            monitor_labels,
        )
        self.monitor_not_robust = self._counter(
            "perg_monitor_not_robust", "Judged samples that are broken, or relevant and not followed.", monitor_labels
        )
        self.monitor_uncomparable = self._counter(
            "perg_monitor_uncomparable",
            "Samples the consistency judge could not compare (excluded from the ratios).",
            monitor_labels,
        )
        self.monitor_follow_score = self._histogram(
            "perg_monitor_follow_score",
            "Likert follow scores (1-5) of samples with a relevant preference.",
            ("model", "strategy", "role"),
            buckets=(1, 2, 3, 4, 5),
            unit="{score}",
        )
        self.monitor_queue_depth = self._gauge("perg_monitor_queue_depth", "Samples waiting for the monitor's workers.", unit="{sample}")
        self.monitor_enqueued = self._counter("perg_monitor_enqueued", "Samples put on the monitor queue.", ("role",))
        self.monitor_dropped = self._counter(
            "perg_monitor_dropped",
            "Samples dropped: queue full, abandoned at shutdown, the Redis queue unavailable (redis_unavailable), or a Responses "
            "request that only means something with stored state (stateful).",
            ("reason",),
        )
        self.trace_spans_dropped = self._counter(
            "perg_trace_spans_dropped",
            "Trace spans not exported: the export queue was full (queue_full), or the collector failed or could not be "
            "reached (export_failed). Exporting never slows or fails a request.",
            ("reason",),
            unit="{span}",
        )
        self.monitor_judge_errors = self._counter(
            "perg_monitor_judge_errors", "Judge calls that failed or returned an invalid verdict.", ("judge", "reason")
        )
        self.monitor_verdicts_missing = self._counter(
            "perg_monitor_verdicts_missing",
            "Verdicts a sample or canary probe needed but did not get (the judge failed): a missing follow verdict "
            "counts as not followed, a missing consistency verdict leaves the sample out of the ratios.",
            ("judge",),
        )
        self.monitor_judge_duration = self._histogram(
            "perg_monitor_judge_duration_seconds", "Judge call duration, retries included.", ("judge",)
        )
        self.monitor_duplicates = self._counter(
            "perg_monitor_duplicate_verdicts",
            "Judged samples neither stored nor counted because the same (request, role, judge fingerprint) was stored "
            "already: a job delivered again after its verdicts were stored.",
            unit="{sample}",
        )
        # the shared queue (monitor.queue: redis): the stream, its consumer group, the judge workers
        self.monitor_published = self._counter(
            "perg_monitor_published", "Sampled jobs written to the Redis stream by this serving process.", unit="{job}"
        )
        self.monitor_stream_length = self._gauge(
            "perg_monitor_stream_length",
            "Entries in the monitor's Redis stream: jobs not yet acknowledged (acknowledged ones are deleted).",
            unit="{job}",
            mode="livemax",
        )
        self.monitor_stream_lag = self._gauge(
            "perg_monitor_stream_lag",
            "Entries of the stream never delivered to a judge worker (the consumer group's lag).",
            unit="{job}",
            mode="livemax",
        )
        self.monitor_stream_pending = self._gauge(
            "perg_monitor_stream_pending",
            "Entries delivered to a judge worker and not yet acknowledged (being judged, or of a worker that died).",
            unit="{job}",
            mode="livemax",
        )
        self.monitor_dead_letter_length = self._gauge(
            "perg_monitor_dead_letter_length", "Entries in the dead-letter stream.", unit="{job}", mode="livemax"
        )
        self.monitor_claimed = self._counter(
            "perg_monitor_claimed",
            "Pending jobs this worker claimed from another consumer idle past monitor.claim_after_seconds (XAUTOCLAIM).",
            unit="{job}",
        )
        self.monitor_dead_lettered = self._counter(
            "perg_monitor_dead_lettered",
            "Jobs moved to the dead-letter stream after monitor.max_deliveries deliveries without success.",
            unit="{job}",
        )
        self.monitor_stream_lost = self._counter(
            "perg_monitor_stream_lost",
            "Pending stream entries found deleted when claimed (trimmed or deleted by someone else): jobs lost.",
            unit="{job}",
        )
        self.monitor_worker_jobs = self._counter(
            "perg_monitor_worker_jobs",
            "Jobs a judge worker finished, by outcome: acknowledged (verdicts stored, or nothing to judge), failed "
            "(left pending, delivered again), dead_lettered. Per worker: by the scrape's instance label.",
            ("outcome",),
            unit="{job}",
        )
        self.monitor_worker_job_duration = self._histogram(
            "perg_monitor_worker_job_duration_seconds", "Time a judge worker spent on one job, judges and store included.", ()
        )
        self.monitor_judge_agreement = self._gauge(
            "perg_monitor_judge_agreement",
            "Cohen's kappa of the current judge (by fingerprint) against the operators' labels on stored samples "
            "(follow: linearly weighted over the 1-5 scores; consistency: unweighted); NaN with no label.",
            ("judge",),
            unit="1",
            mode="livemax",
        )
        self.monitor_judge_agreement_labels = self._gauge(
            "perg_monitor_judge_agreement_labels",
            "Labelled samples behind perg_monitor_judge_agreement (judged by the current judge fingerprint).",
            ("judge",),
            unit="{label}",
            mode="livemax",
        )
        # canary probes: labelled items through the served pipeline, with and without preferences
        canary_labels = ("model", "strategy", "setting")
        self.canary_probes = self._counter("perg_canary_probes", "Canary items probed (with and without preferences).", canary_labels)
        self.canary_correct = self._counter(
            "perg_canary_correct",
            "Canary answers equal to the gold letter, by condition (with_preferences | without_preferences).",
            (*canary_labels, "condition"),
        )
        self.canary_broken = self._counter(
            "perg_canary_broken", "Canary items right without preferences and wrong with them.", canary_labels
        )
        self.canary_not_followed = self._counter(
            "perg_canary_not_followed",
            "Canary items right without preferences whose relevant preference was not followed.",
            canary_labels,
        )
        self.canary_not_robust = self._counter(
            "perg_canary_not_robust", "Canary items right without preferences and not robust with them.", canary_labels
        )
        self.canary_both_correct = self._counter(
            "perg_canary_both_correct", "Canary items right both with and without preferences.", canary_labels
        )
        self.canary_either_correct = self._counter(
            "perg_canary_either_correct", "Canary items right with or without preferences (PVR denominator).", canary_labels
        )
        self.canary_errors = self._counter("perg_canary_errors", "Canary probes that failed.", ("reason",))

    def _declare(self, kind: str, name: str, help_text: str, labels: tuple[str, ...], unit: str, semconv: str) -> None:
        self.declared.append(Declared(name, kind, labels, help_text, unit or ("s" if name.endswith("_seconds") else "1"), semconv))

    def _counter(self, name: str, help_text: str, labels: tuple[str, ...] = (), *, unit: str = "", semconv: str = "") -> Counter:
        self._declare("counter", name + "_total", help_text, labels, unit, semconv)
        return Counter(name, help_text, labels, registry=self.registry)

    def _histogram(
        self,
        name: str,
        help_text: str,
        labels: tuple[str, ...],
        *,
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
        unit: str = "",
        semconv: str = "",
    ) -> Histogram:
        self._declare("histogram", name, help_text, labels, unit, semconv)
        return Histogram(name, help_text, labels, buckets=buckets, registry=self.registry)

    def _gauge(
        self, name: str, help_text: str, labels: tuple[str, ...] = (), *, unit: str, mode: Literal["livesum", "livemax"] = "livesum"
    ) -> Gauge:
        """A level summed over `--workers` processes (live ones only); `mode="livemax"` for a level
        every process reads from the same place (a Redis stream), which must not be summed."""
        self._declare("gauge", name, help_text, labels, unit, "")
        return Gauge(name, help_text, labels, registry=self.registry, multiprocess_mode=mode)

    def request_children(self, route: str, method: str, status: int, strategy: str) -> tuple[Any, Any, Any]:
        """The labelled `requests`, `request_duration` and `overhead` of one finished request, kept
        together: one lookup per request on the hot path."""
        key = (route, method, status, strategy)
        found = self._request_children.get(key)
        if found is None:
            found = self._request_children[key] = (
                self.child(self.requests, route, method, str(status), strategy),
                self.child(self.request_duration, route, strategy),
                self.child(self.overhead, route, strategy),
            )
        return found

    def child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found


def metric_samples(registry: CollectorRegistry, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called `name` (say `perg_monitor_dropped_total`) in this
    process's registry, for the admin routes that show the figures of one process."""
    found = []
    for family in registry.collect():
        found += [(dict(sample.labels), sample.value) for sample in family.samples if sample.name == name]
    return found


def private_metrics() -> Metrics:
    """A registry nobody scrapes: the monitor's own pipeline runs count there, not in /metrics."""
    return Metrics(CollectorRegistry())

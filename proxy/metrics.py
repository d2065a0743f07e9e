"""Every Prometheus metric of the proxy, on an injected registry.

Counters and histograms only (plus gauges for levels); ratios are computed in PromQL so that
replicas add up. Labels are bounded: routes and strategies are fixed sets, and model names, which
clients choose, pass through `BoundedLabel`, which folds everything past a fixed number of distinct
values into "other". No user id or free text is ever a label value.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144)


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


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.model_label = BoundedLabel()
        r = self.registry
        self.requests = Counter(
            "perg_requests", "Client requests handled.", ["route", "method", "status", "strategy"], registry=r
        )
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

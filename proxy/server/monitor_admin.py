"""The monitor's admin routes for the operator page (admin key), beside `admin.py`'s:

- `GET /perg/monitor/series`: bucketed counts and rates over a window, per strategy and role,
  from the stored samples, and the canary's figures per bucket (this process's runs);
- `GET /perg/monitor/process`: this process's queue, judge-error, aligner and canary counters;
- `GET /perg/monitor/samples/{sample_id}`: one sample with its labels;
- `POST /perg/monitor/samples/{sample_id}/label`: record an operator's label on a sample.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any, get_args

from aiohttp import web

from ..errors import InvalidRequest
from ..monitor.canary_history import CANARY_COUNTS
from ..monitor.figures import canary_figures, canary_groups, process_figures, rate_intervals
from ..preferences.models import JudgedSample, SampleCounts, SampleSeries, Verdict
from ..preferences.store_errors import SampleNotFound, StoreError
from .admin import json_response, only_query, query_integer, ratios, store_of
from .middleware import read_body
from .protocol import parse_json_object
from .services import SERVICES, Services

DEFAULT_BUCKETS = 24
MAX_BUCKETS = 200
MAX_WINDOW = 366 * 86400
VERDICTS: tuple[str, ...] = get_args(Verdict)


def window_of(request: web.Request) -> float:
    raw = request.query.get("window_seconds", str(request.app[SERVICES].settings.monitor.summary_window_seconds))
    try:
        window = float(raw)
    except ValueError:
        window = -1.0
    if not 0 < window <= MAX_WINDOW:
        raise InvalidRequest(
            "'window_seconds' must be a positive number of seconds (at most a year).", param="window_seconds", code="invalid_value"
        )
    return window


def buckets_of(request: web.Request) -> int:
    buckets = query_integer(request.query.get("buckets", str(DEFAULT_BUCKETS)), 1, MAX_BUCKETS)
    if buckets is None:
        raise InvalidRequest(f"'buckets' must be an integer from 1 to {MAX_BUCKETS}.", param="buckets", code="invalid_value")
    return buckets


def figures_of(counts: SampleCounts) -> dict[str, Any]:
    """One group's counts, rates and 95% intervals, as in `/perg/monitor/summary`."""
    rates = ratios(counts.judged, counts.uncomparable, counts.broken, counts.not_followed, counts.not_robust)
    return {**counts.model_dump(mode="json", exclude={"strategy", "role", "fingerprint"}), **rates, **rate_intervals(counts)}


def dense_groups(series: SampleSeries) -> list[dict[str, Any]]:
    """One entry per (strategy, role, judge fingerprint) seen, with a point for every bucket
    (empty ones too): verdicts of a changed judge are a group of their own, never mixed in."""
    found: dict[tuple[str, str, str | None], dict[int, SampleCounts]] = {}
    width = timedelta(seconds=series.bucket_seconds)
    for point in series.points:
        index = round((point.start - series.since) / width)
        found.setdefault((point.counts.strategy, point.counts.role, point.counts.fingerprint), {})[index] = point.counts
    groups = []
    for (strategy, role, fingerprint), by_index in sorted(found.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or "")):
        points = []
        for index in range(series.buckets):
            counts = by_index.get(index) or SampleCounts(strategy=strategy, role=role, fingerprint=fingerprint)
            points.append({"start": (series.since + width * index).isoformat(), **figures_of(counts)})
        groups.append({"strategy": strategy, "role": role, "fingerprint": fingerprint, "points": points})
    return groups


def canary_points(services: Services, since: datetime, width: timedelta, buckets: int) -> list[dict[str, Any]] | None:
    canary = services.monitor.canary
    if canary is None:
        return None
    empty = dict.fromkeys(CANARY_COUNTS, 0)
    per_bucket = canary.history.buckets(since, width, buckets)
    return [{"start": (since + width * index).isoformat(), **canary_figures(counts or empty)} for index, counts in enumerate(per_bucket)]


async def monitor_series(request: web.Request) -> web.Response:
    only_query(request, {"window_seconds", "buckets"})
    window, buckets = window_of(request), buckets_of(request)
    services: Services = request.app[SERVICES]
    series = await (await store_of(request)).sample_series(window, buckets)
    width = timedelta(seconds=series.bucket_seconds)
    return json_response(
        {
            "object": "monitor.series",
            "since": series.since.isoformat(),
            "window_seconds": window,
            "bucket_seconds": series.bucket_seconds,
            "buckets": buckets,
            "groups": dense_groups(series),
            "canary": canary_points(services, series.since, width, buckets),
        }
    )


async def monitor_process(request: web.Request) -> web.Response:
    only_query(request, set())
    services: Services = request.app[SERVICES]
    settings, monitor = services.settings.monitor, services.monitor
    registry = services.metrics.registry
    groups, overall = canary_groups(registry)
    try:
        agreement: dict[str, Any] | None = await monitor.agreement()
    except StoreError:
        agreement = None
    return json_response(
        {
            "object": "monitor.process",
            "scope": "process",
            "pid": os.getpid(),
            "monitor": {
                "enabled": settings.enabled,
                "queue_depth": monitor.depth,
                "queue_size": settings.queue_size,
                "workers": settings.workers if settings.enabled else 0,
                "sample_rate": settings.sample_rate,
                "shadow_rate": settings.shadow_rate,
                "store_samples": settings.store_samples,
                "queue": settings.queue,
                "judges_here": settings.judges_here,
            },
            **process_figures(registry),
            "canary": {"enabled": monitor.canary is not None, "groups": groups, "total": overall},
            "agreement": agreement,
        }
    )


def sample_id_of(request: web.Request) -> str:
    sample_id = request.match_info["sample_id"]
    if not sample_id.strip() or len(sample_id) > 256:
        raise InvalidRequest("The sample id must be 1 to 256 characters.", param="sample_id", code="invalid_value")
    return sample_id


def sample_json(sample: JudgedSample) -> dict[str, Any]:
    return {"object": "monitor.sample", **sample.model_dump(mode="json")}


async def get_sample(request: web.Request) -> web.Response:
    only_query(request, set())
    sample_id = sample_id_of(request)
    sample = await (await store_of(request)).get_sample(sample_id)
    if sample is None:
        raise SampleNotFound(sample_id)
    return json_response(sample_json(sample))


async def label_sample(request: web.Request) -> web.Response:
    only_query(request, set())
    sample_id = sample_id_of(request)
    body = parse_json_object(await read_body(request))
    for key in body:
        if key not in ("follow_score", "consistency"):
            raise InvalidRequest(f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter")
    score, consistency = body.get("follow_score"), body.get("consistency")
    if type(score) is not int or not 1 <= score <= 5:
        raise InvalidRequest("'follow_score' must be an integer from 1 to 5.", param="follow_score", code="invalid_value")
    if consistency not in VERDICTS:
        raise InvalidRequest(f"'consistency' must be one of {', '.join(VERDICTS)}.", param="consistency", code="invalid_value")
    label = await (await store_of(request)).add_label(sample_id, score, consistency)
    try:
        await request.app[SERVICES].monitor.agreement()  # the gauge follows each new label
    except StoreError:
        pass
    return json_response({"object": "monitor.sample.label", **label.model_dump(mode="json")})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/perg/monitor/series", monitor_series, name="monitor:series")
    app.router.add_get("/perg/monitor/process", monitor_process, name="monitor:process")
    app.router.add_get("/perg/monitor/samples/{sample_id}", get_sample, name="monitor:sample")
    app.router.add_post("/perg/monitor/samples/{sample_id}/label", label_sample, name="monitor:label")

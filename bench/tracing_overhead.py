"""Benchmark: what OpenTelemetry tracing costs the request path.

    python bench/tracing_overhead.py [--requests 2000] [--rounds 3]

Two parts, in one run:

1. The hooks, timed in this process: every call a personalized Pref-Aligner request makes into
   proxy/telemetry.py (request span in and out, three upstream calls with their header
   injection, the outcome, the monitor's traceparent), with traces off, on at 0.0 and on at 1.0
   (spans kept in memory), in µs per request; and what the OTLP encoder takes per span.
2. Three proxies on the same fake upstream, identical but for `telemetry.traces`: off, on at
   sample ratio 0.0 (spans started but not recorded), and on at 1.0 exporting every span over
   OTLP/HTTP to a receiver on loopback (bench/otlp_sink.py, which decodes and counts them). They
   serve the same personalized `pref_aligner` requests (stage 1, gate, stage 2: four spans each),
   interleaved, at concurrency 1 and 32: p50 and p99 latency, and the p50 each setting adds over
   off. Bounded in request count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import timeit
from pathlib import Path

import httpx2
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import otlp_sink  # noqa: E402
from bench.common import KEY, pin_self, start_fake, start_proxy, stop  # noqa: E402
from bench.common import run as run_async  # noqa: E402
from bench.loadgen import chat_request, run_load  # noqa: E402

SETTINGS = {
    "off": "",
    "ratio 0.0": "telemetry: {{traces: {{enabled: true, endpoint: 'http://127.0.0.1:{sink}/v1/traces', sample_ratio: 0.0}}}}",
    "ratio 1.0": "telemetry: {{traces: {{enabled: true, endpoint: 'http://127.0.0.1:{sink}/v1/traces', sample_ratio: 1.0}}}}",
}
EXTENSION = {"personalization": {"preferences": ["Answer in the style of a pirate."]}}


class Turn:
    """What the request span reads of a served Pref-Aligner turn."""

    status, model, strategy, aligned, stream = 200, "echo", "pref_aligner", "true", False
    preference_source, preferences, judge, shadow, error_code = "request", ("p",), False, False, None


def hooks_us(ratio: float | None, loops: int = 3000) -> tuple[float, float]:
    """µs per Pref-Aligner request spent in the tracing hooks on the event loop's thread (tracing
    off when `ratio` is None; spans kept in memory, not exported), and the µs the OTLP encoder
    then takes per recorded span on the export thread."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from prometheus_client import CollectorRegistry

    from proxy import telemetry
    from proxy.config import TraceSettings
    from proxy.metrics import Metrics

    exporter = InMemorySpanExporter()
    settings = TraceSettings(enabled=ratio is not None, sample_ratio=ratio or 0.0, max_queue_size=200_000)
    tracing = telemetry.install(settings, Metrics(CollectorRegistry()), exporter)
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    answer = orjson.dumps({"id": "c", "model": "echo", "choices": [{"index": 0, "finish_reason": "stop"}], "usage": {"prompt_tokens": 9}})
    headers = {"X-Client-Request-Id": "r"}

    def one_request() -> None:
        scope = telemetry.enter_request("r", "POST", "chat_completions", headers)
        for stage in ("stage1", "gate", "stage2"):
            with telemetry.upstream_call("main", "http://127.0.0.1:1/v1", stage, body) as traced, traced.current():
                telemetry.outgoing(dict(headers))
                traced.response_body(answer)
        telemetry.annotate(outcome="aligned")
        telemetry.traceparent()
        telemetry.leave_request(scope, Turn())

    def bare() -> None:  # the same loop without the hooks: what to subtract
        for _ in ("stage1", "gate", "stage2"):
            dict(headers)
        Turn()

    try:
        hooked = min(timeit.repeat(one_request, number=loops, repeat=3)) / loops
        baseline = min(timeit.repeat(bare, number=loops, repeat=3)) / loops
        encoding = 0.0
        if tracing is not None:
            tracing.force_flush()
            spans = exporter.get_finished_spans()[:512]
            if spans:
                encoding = min(timeit.repeat(lambda: encode_spans(spans).SerializePartialToString(), number=5, repeat=3)) / 5 / len(spans)
    finally:
        if tracing is not None:
            tracing.shutdown()
            telemetry._active = None
    return (hooked - baseline) * 1e6, encoding * 1e6


async def measure(port: int, concurrency: int, requests: int) -> dict[str, float]:
    request = chat_request("127.0.0.1", port, "/v1/chat/completions", "echo", False, KEY, EXTENSION)
    result = await run_load("127.0.0.1", port, request, concurrency=concurrency, requests=requests, max_seconds=120)
    if result.errors:
        raise RuntimeError(f"{result.errors} errors: {result.error_kinds}")
    return result.summary()


async def run(requests: int, rounds: int) -> tuple[dict[tuple[str, int], list[dict[str, float]]], dict[str, float]]:
    workdir = Path(tempfile.mkdtemp(prefix="perg-bench-tracing-"))
    fake, upstream_port = start_fake()
    sink, sink_port = otlp_sink.start()
    proxies = {
        name: start_proxy(
            upstream_port,
            workdir,
            "personalization: {default_strategy: pref_aligner}\n" + extra.format(sink=sink_port),
            name.replace(" ", "-"),
        )
        for name, extra in SETTINGS.items()
    }
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for _, port in proxies.values():
            await measure(port, 8, 300)  # warm-up
        for _ in range(rounds):  # interleaved, so drift on the machine hits every setting alike
            for concurrency in (1, 32):
                for name, (_, port) in proxies.items():
                    results.setdefault((name, concurrency), []).append(await measure(port, concurrency, requests // rounds))
        await asyncio.sleep(2.5)  # one export interval (1 s) and then some: the last batches arrive
        extra = {
            "spans received": float(httpx2.get(f"http://127.0.0.1:{sink_port}/count", timeout=5).json()["spans"]),
            "spans dropped": dropped(proxies["ratio 1.0"][1]),
        }
    finally:
        for process, _ in proxies.values():
            stop(process)
        stop(sink)
        stop(fake)
    return results, extra


def dropped(port: int) -> float:
    text = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("perg_trace_spans_dropped_total{"))


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def report(
    results: dict[tuple[str, int], list[dict[str, float]]],
    extra: dict[str, float],
    hooks: dict[str, tuple[float, float]],
    requests: int,
    rounds: int,
) -> None:
    print("In process, per Pref-Aligner request (four spans when recorded):")
    for name, (loop_us, encode_us) in hooks.items():
        encoding = f"; then {encode_us:.1f} µs per span to encode, on the export thread" if encode_us else ""
        print(f"  traces {name}: {loop_us:.1f} µs on the event loop's thread{encoding}")
    print()
    print("| traces | concurrency | p50 ms | p99 ms | req/s |")
    print("|---|---|---|---|---|")
    for concurrency in (1, 32):
        for name in SETTINGS:
            rows = results[(name, concurrency)]
            p50, p99, rps = (median([r[key] for r in rows]) for key in ("p50_ms", "p99_ms", "rps"))
            print(f"| {name} | {concurrency} | {p50:.3f} | {p99:.3f} | {rps:.0f} |")
    print()
    for concurrency in (1, 32):
        off = median([r["p50_ms"] for r in results[("off", concurrency)]])
        for name in ("ratio 0.0", "ratio 1.0"):
            added = median([r["p50_ms"] for r in results[(name, concurrency)]]) - off
            print(f"c={concurrency}: traces on at {name} add {added:+.3f} ms at p50 ({added / off:+.1%})")
    expected = 4 * (requests // rounds * rounds * 2 + 300)  # 4 spans per request, measured and warm-up
    print(
        f"OTLP receiver: {extra['spans received']:.0f} spans of the {expected} the ratio-1.0 proxy made; dropped and counted: {extra['spans dropped']:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per proxy and concurrency, over all rounds")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pin_self(1)
    hooks = {name: hooks_us(ratio) for name, ratio in (("off", None), ("ratio 0.0", 0.0), ("ratio 1.0", 1.0))}
    results, extra = run_async(run(args.requests, args.rounds))
    report(results, extra, hooks, args.requests, args.rounds)


if __name__ == "__main__":
    main()

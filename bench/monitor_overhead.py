"""Benchmark: what the online monitor costs the request path.

    python bench/monitor_overhead.py [--requests 3000] [--delay-ms 20]

Two proxies on the same fake upstream, identical but for `monitor.sample_rate` (0.0 and 1.0,
shadow runs too, the fake upstream also answering as judge), serve the same personalized requests
(`naive`, so each request is one upstream call and the monitor's work, up to nine more calls
per sample, is all extra) in the same run, interleaved: p50 and p99 latency at concurrency 1 and
32. Every upstream call, the judges' too, takes `--delay-ms` (a model's latency): the monitor's
fixed workers then spend their time waiting on the judge, as in production, and what they cost
the request path is their CPU. `--delay-ms 0` shows the worst case, judges that answer at once,
where the workers use all the CPU they can get. Bounded in request count and time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import KEY, pin_self, start_fake, start_proxy, stop  # noqa: E402
from bench.common import run as run_async  # noqa: E402
from bench.loadgen import chat_request, run_load  # noqa: E402

MONITOR = """
personalization: {{default_strategy: naive}}
monitor: {{enabled: true, sample_rate: {rate}, shadow_rate: {rate}, workers: 2, queue_size: 100000, drain_seconds: 0}}
"""
EXTENSION = {"personalization": {"preferences": ["Answer in the style of a pirate."]}}


async def measure(port: int, model: str, concurrency: int, requests: int) -> dict[str, float]:
    request = chat_request("127.0.0.1", port, "/v1/chat/completions", model, False, KEY, EXTENSION)
    result = await run_load("127.0.0.1", port, request, concurrency=concurrency, requests=requests, max_seconds=120)
    if result.errors:
        raise RuntimeError(f"{result.errors} errors")
    return result.summary()


async def run(requests: int, rounds: int, delay_ms: int) -> dict[tuple[float, int], list[dict[str, float]]]:
    model = f"delay-{delay_ms}" if delay_ms else "echo"
    workdir = Path(tempfile.mkdtemp(prefix="perg-bench-monitor-"))
    fake, upstream_port = start_fake()
    proxies = {rate: start_proxy(upstream_port, workdir, MONITOR.format(rate=rate), f"rate-{rate}") for rate in (0.0, 1.0)}
    results: dict[tuple[float, int], list[dict[str, float]]] = {}
    try:
        for _, port in proxies.values():
            await measure(port, model, 8, 300)  # warm-up
        for _ in range(rounds):  # interleaved, so drift on the machine hits both alike
            for concurrency in (1, 32):
                for rate, (_, port) in proxies.items():
                    results.setdefault((rate, concurrency), []).append(await measure(port, model, concurrency, requests // rounds))
    finally:
        for process, _ in proxies.values():
            stop(process)
        stop(fake)
    return results


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def report(results: dict[tuple[float, int], list[dict[str, float]]]) -> None:
    print("| sample rate | concurrency | p50 ms | p99 ms | req/s |")
    print("|---|---|---|---|---|")
    for (rate, concurrency), rows in sorted(results.items(), key=lambda item: (item[0][1], item[0][0])):
        print(
            f"| {rate} | {concurrency} | {median([r['p50_ms'] for r in rows]):.3f} | {median([r['p99_ms'] for r in rows]):.3f} | {median([r['rps'] for r in rows]):.0f} |"
        )
    for concurrency in (1, 32):
        off, on = results[(0.0, concurrency)], results[(1.0, concurrency)]
        p50 = median([r["p50_ms"] for r in on]) - median([r["p50_ms"] for r in off])
        p99 = median([r["p99_ms"] for r in on]) - median([r["p99_ms"] for r in off])
        print(f"c={concurrency}: sampling every request adds {p50:+.3f} ms at p50, {p99:+.3f} ms at p99")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="per proxy and concurrency, over all rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay-ms", type=int, default=20, help="every upstream call's latency, judges included")
    args = parser.parse_args()
    pin_self(1)
    results = run_async(run(args.requests, args.rounds, args.delay_ms))
    report(results)


if __name__ == "__main__":
    main()

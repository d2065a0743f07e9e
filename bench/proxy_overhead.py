"""Benchmark: requests sent directly to the fake upstream vs the same requests through perg-proxy.

    python bench/proxy_overhead.py [--quick] [--strategy off] [--soak 100000]

The proxy runs as its own process pinned to CPU 0; the fake upstream and this load generator
share CPU 1. For each path (direct, proxy), streaming and not, at concurrency 1 and 32 it prints
p50 / p99 latency, requests/s and time to first byte; then the proxy's added latency, and its
resident memory at the 10,000th and the last request of a soak run. Every run is bounded in
request count and time. Figures are only comparable within one run (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import KEY, pin_self, rss_kib, start_fake, start_proxy, stop  # noqa: E402
from bench.common import run as run_async  # noqa: E402
from bench.loadgen import chat_request, run_load  # noqa: E402


def start_processes(strategy: str, workdir: Path) -> tuple[subprocess.Popen, subprocess.Popen, int, int]:
    fake, upstream_port = start_fake()
    proxy, proxy_port = start_proxy(upstream_port, workdir, f'personalization: {{default_strategy: "{strategy}"}}')
    return fake, proxy, upstream_port, proxy_port


async def measure(port: int, key: str, stream: bool, concurrency: int, requests: int, model: str = "echo") -> dict[str, float]:
    request = chat_request("127.0.0.1", port, "/v1/chat/completions", model, stream, key)
    await run_load("127.0.0.1", port, request, concurrency=concurrency, requests=min(requests, 500), max_seconds=20)  # warm-up
    result = await run_load("127.0.0.1", port, request, concurrency=concurrency, requests=requests, max_seconds=120)
    return result.summary()


async def soak(port: int, proxy_pid: int, total: int) -> tuple[int, int, int]:
    request = chat_request("127.0.0.1", port, "/v1/chat/completions", "echo", False, KEY)
    await run_load("127.0.0.1", port, request, concurrency=32, requests=10_000, max_seconds=120)
    at_10k = rss_kib(proxy_pid)
    result = await run_load("127.0.0.1", port, request, concurrency=32, requests=total - 10_000, max_seconds=900)
    return at_10k, rss_kib(proxy_pid), result.errors


def table(rows: list[dict]) -> str:
    head = "| path | stream | conc | requests | errors | p50 ms | p99 ms | req/s | TTFT p50 ms |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['path']} | {r['stream']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
            f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['rps']:.0f} | {r['ttfb_p50_ms']:.3f} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="perg-bench-"))
    fake, proxy, upstream_port, proxy_port = start_processes(args.strategy, workdir)
    rows: list[dict] = []
    try:
        n1, n32 = (1000, 5000) if args.quick else (3000, 20000)
        for stream in (False, True):
            for concurrency, count in ((1, n1), (32, n32)):
                for path, port, key in (("direct", upstream_port, ""), ("proxy", proxy_port, KEY)):
                    summary = await measure(port, key, stream, concurrency, count)
                    rows.append({"path": path, "stream": stream, "concurrency": concurrency, **summary})
        memory = await soak(proxy_port, proxy.pid, args.soak) if args.soak else None
    finally:
        stop(proxy)
        stop(fake)
    return {"rows": rows, "memory": memory, "strategy": args.strategy}


def report(outcome: dict) -> None:
    rows = outcome["rows"]
    print(table(rows))
    print()
    for stream in (False, True):
        for concurrency in (1, 32):
            pair = {r["path"]: r for r in rows if r["stream"] == stream and r["concurrency"] == concurrency}
            d, p = pair["direct"], pair["proxy"]
            print(
                f"stream={stream!s:5} c={concurrency:<3} added p50 {p['p50_ms'] - d['p50_ms']:+.3f} ms, "
                f"added p99 {p['p99_ms'] - d['p99_ms']:+.3f} ms, TTFT p50 {p['ttfb_p50_ms'] - d['ttfb_p50_ms']:+.3f} ms, "
                f"proxy {p['rps']:.0f} req/s ({p['rps'] / d['rps']:.2f} of direct)"
            )
    if outcome["memory"]:
        at_10k, at_end, errors = outcome["memory"]
        print(
            f"soak: RSS {at_10k / 1024:.1f} MiB at request 10,000, {at_end / 1024:.1f} MiB at the end ({(at_end / at_10k - 1) * 100:+.1f}%), {errors} errors"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per row")
    parser.add_argument("--strategy", default="off")
    parser.add_argument("--soak", type=int, default=100_000, help="requests in the memory soak (0 to skip)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    pin_self(1)
    outcome = run_async(run(args))
    report(outcome)
    if args.json:
        args.json.write_text(json.dumps(outcome, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark: what Pref-Aligner adds over the upstream calls it makes, and its CPU per request.

    python bench/pref_aligner.py [--delay-ms 20] [--requests 200] [--rounds 10] [--cpu-requests 2000]

Latency (concurrency 1): the fake upstream answers every call after D ms. D is measured by the
proxy's own client (`UpstreamClient.chat`, from the proxy's CPU), the same client the proxy's
calls use, so "added" is each case's p50 minus its sequential upstream calls x D: `off` makes
one call; `pref_aligner` two in sequence (stage 1, then the rewrite), with the gate beside
stage 1 when it is on (then the first step costs D2, two concurrent direct calls); with only
unrelated preferences the rewrite is skipped.
Target: added p50 <= 2 ms. The cases run interleaved, in `--rounds` blocks each.

CPU (concurrency 8, the fake upstream answering at once, the proxy pinned to one core): the
proxy process's CPU time per request for `off` and for `pref_aligner` with a relevant preference
(three upstream calls). Target: pref_aligner <= 3x off. Bounded in requests and time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import KEY, pin_self, start_fake, start_proxy, stop  # noqa: E402
from bench.common import run as run_async  # noqa: E402
from bench.loadgen import Result, chat_request, run_load  # noqa: E402
from bench.memory import cpu_seconds  # noqa: E402
from proxy.config import UpstreamSettings  # noqa: E402
from proxy.metrics import private_metrics  # noqa: E402
from proxy.upstream.client import UpstreamClient  # noqa: E402

STYLE = "Answer in the style of a pirate."
UNRELATED = ["I have a dog named Max.", "My favourite colour is green."]


class Case:
    """One measured case: its requests run in blocks, interleaved with every other case's."""

    def __init__(self, name: str, port: int, model: str, extra: dict | None, calls: int, stream: bool = False) -> None:
        self.name = name
        self.port = port
        self.calls = calls  # upstream calls in sequence
        self.stream = stream
        self.request = chat_request("127.0.0.1", port, "/v1/chat/completions", model, stream, KEY, extra)
        self.result = Result()

    async def run(self, requests: int) -> None:
        block = await run_load("127.0.0.1", self.port, self.request, concurrency=1, requests=requests, max_seconds=300)
        if block.errors:
            raise RuntimeError(f"{block.errors} errors while measuring {self.name}: {block.error_kinds}")
        self.result.latencies += block.latencies
        self.result.ttfb += block.ttfb


class DirectCase:
    """D: one chat call on the proxy's own client, from the proxy's CPU (`pair`: two at once,
    as the gate and stage 1 are made, = D2)."""

    calls = 0
    stream = False

    def __init__(self, port: int, model: str, pair: bool = False) -> None:
        self.pair = pair
        self.name = "two concurrent direct calls = D2" if pair else "direct call on the proxy's client = D"
        self.client = UpstreamClient(UpstreamSettings(name="bench", base_url=f"http://127.0.0.1:{port}/v1"), private_metrics())
        self.body = {"model": model, "messages": [{"role": "user", "content": "hello benchmark"}]}
        self.result = Result()
        self.started = False

    async def run(self, requests: int) -> None:
        pin_self(0)
        if not self.started:
            await self.client.start()
            self.started = True
        try:
            for _ in range(requests):
                started = time.perf_counter()
                if self.pair:
                    await asyncio.gather(*(self.client.chat(self.body, request_id="bench", timeout=30, stage="bench") for _ in range(2)))
                else:
                    await self.client.chat(self.body, request_id="bench", timeout=30, stage="bench")
                self.result.latencies.append(time.perf_counter() - started)
        finally:
            pin_self(1)


def extension(preferences: list[str], strategy: str) -> dict:
    return {"personalization": {"preferences": preferences, "strategy": strategy}}


async def latency(delay_ms: int, requests: int, rounds: int, workdir: Path, upstream_port: int) -> list[tuple[str, float, float, float]]:
    """Rows of (case, p50 ms, p99 ms, added p50 ms over its sequential calls x D)."""
    model = f"delay-{delay_ms}"
    gate_off, port_off = start_proxy(upstream_port, workdir, "personalization: {relevance_gate: {mode: 'off'}}", "gate-off")
    gate_on, port_on = start_proxy(upstream_port, workdir, "personalization: {relevance_gate: {mode: llm}}", "gate-on")
    direct, pair = DirectCase(upstream_port, model), DirectCase(upstream_port, model, pair=True)
    cases: list[Case | DirectCase] = [
        direct,
        pair,
        Case("off", port_on, model, extension([STYLE], "off"), 1),
        Case("pref_aligner, gate off", port_off, model, extension([STYLE], "pref_aligner"), 2),
        Case("pref_aligner, gate on, relevant", port_on, model, extension([STYLE, *UNRELATED], "pref_aligner"), 2),
        Case("pref_aligner, gate on, only unrelated", port_on, model, extension(UNRELATED, "pref_aligner"), 1),
    ]
    try:
        for case in cases:  # warm-up, not counted
            await case.run(10)
            case.result = Result()
        per_round = max(1, requests // rounds)
        for _ in range(rounds):
            for case in cases:
                await case.run(per_round)
    finally:
        await direct.client.close()
        await pair.client.close()
        for process in (gate_on, gate_off):
            stop(process)
    d, d2 = direct.result.summary()["p50_ms"], pair.result.summary()["p50_ms"]
    rows = []
    for case in cases:
        figures = case.result.summary()
        calls = d2 + (case.calls - 1) * d if case.name.startswith("pref_aligner, gate on") else case.calls * d
        rows.append((case.name, figures["p50_ms"], figures["p99_ms"], figures["p50_ms"] - calls))
    return rows


async def cpu(requests: int, workdir: Path, upstream_port: int) -> dict[str, float]:
    """Proxy CPU milliseconds per request, `off` and `pref_aligner` (relevant preference), the
    upstream answering at once, concurrency 8."""
    process, port = start_proxy(upstream_port, workdir, "personalization: {relevance_gate: {mode: llm}}", "cpu")
    out = {}
    try:
        for name, extra in (("off", extension([STYLE], "off")), ("pref_aligner", extension([STYLE, *UNRELATED], "pref_aligner"))):
            request = chat_request("127.0.0.1", port, "/v1/chat/completions", "echo", False, KEY, extra)
            await run_load("127.0.0.1", port, request, concurrency=8, requests=200, max_seconds=10)  # warm-up
            before = cpu_seconds(process.pid)
            result = await run_load("127.0.0.1", port, request, concurrency=8, requests=requests, max_seconds=30)
            if result.errors:
                raise RuntimeError(f"{result.errors} errors while measuring {name}'s CPU: {result.error_kinds}")
            out[name] = (cpu_seconds(process.pid) - before) / max(1, result.count) * 1000
    finally:
        stop(process)
    return out


async def run(
    delay_ms: int, requests: int, rounds: int, cpu_requests: int
) -> tuple[list[tuple[str, float, float, float]], dict[str, float]]:
    workdir = Path(tempfile.mkdtemp(prefix="perg-bench-aligner-"))
    fake, upstream_port = start_fake()
    try:
        rows = await latency(delay_ms, requests, rounds, workdir, upstream_port)
        costs = await cpu(cpu_requests, workdir, upstream_port)
    finally:
        stop(fake)
    return rows, costs


def report(rows: list[tuple[str, float, float, float]], costs: dict[str, float], delay_ms: int) -> None:
    print(f"fake upstream delay {delay_ms} ms per call; D measured on the proxy's own client from the proxy's CPU; concurrency 1\n")
    print("| case | p50 ms | p99 ms | added p50 ms over its calls | target | met |")
    print("|---|---|---|---|---|---|")
    for name, p50, p99, added in rows:
        if name.startswith(("direct", "two concurrent")):
            print(f"| {name} | {p50:.2f} | {p99:.2f} | – | | |")
        else:
            print(f"| {name} | {p50:.2f} | {p99:.2f} | {added:+.2f} | <= 2.00 | {'yes' if added <= 2 else 'NO'} |")
    ratio = costs["pref_aligner"] / costs["off"]
    print("\nproxy CPU per request (concurrency 8, upstream answering at once, proxy pinned to one core):")
    print(
        f"  off {costs['off']:.3f} ms, pref_aligner {costs['pref_aligner']:.3f} ms (three upstream calls) = {ratio:.2f}x off (target <= 3x: {'yes' if ratio <= 3 else 'NO'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200, help="per case")
    parser.add_argument("--rounds", type=int, default=10, help="blocks per case, the cases interleaved")
    parser.add_argument("--cpu-requests", type=int, default=2000, help="per strategy, for the CPU figures")
    args = parser.parse_args()
    pin_self(1)
    rows, costs = run_async(run(args.delay_ms, args.requests, args.rounds, args.cpu_requests))
    report(rows, costs, args.delay_ms)


if __name__ == "__main__":
    main()

"""Benchmark: Pref-Aligner's latency against a fake upstream that answers after a fixed delay D.

    python bench/pref_aligner.py [--delay-ms 50] [--requests 200] [--rounds 10]

Every upstream call (stage 1, the gate, stage 2, a plain forward) takes D. At concurrency 1 it
prints p50 / p99 end-to-end latency of: one direct call; `off`; `naive`; `pref_aligner` with the
gate off; with the gate on and a relevant preference; with the gate on and only unrelated
preferences; and streaming time to first token. Targets: pref_aligner p50 <= 2D + 2 ms; gate on
with only unrelated preferences <= D + 2 ms (the gate runs beside stage 1); streaming TTFT <=
D + stage 2's first-chunk time + 2 ms. The cases run interleaved, in `--rounds` blocks each, so
a shared machine's changing load moves D and the cases alike. Bounded in request count and time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import KEY, pin_self, start_fake, start_proxy, stop  # noqa: E402
from bench.common import run as run_async  # noqa: E402
from bench.loadgen import Result, chat_request, run_load  # noqa: E402
from proxy.upstream.calls import Pool  # noqa: E402

STYLE = "Answer in the style of a pirate."
UNRELATED = ["I have a dog named Max.", "My favourite colour is green."]


class Case:
    """One measured case: its requests run in blocks, interleaved with every other case's."""

    def __init__(self, name: str, port: int, model: str, key: str, stream: bool, extra: dict | None = None, cpu: int = 1) -> None:
        self.name = name
        self.port = port
        self.cpu = cpu
        self.request = chat_request("127.0.0.1", port, "/v1/chat/completions", model, stream, key, extra)
        self.result = Result()

    async def run(self, requests: int) -> None:
        pin_self(self.cpu)
        block = await run_load("127.0.0.1", self.port, self.request, concurrency=1, requests=requests, max_seconds=300)
        if block.errors:
            raise RuntimeError(f"{block.errors} errors while measuring {self.name}: {block.error_kinds}")
        self.result.latencies += block.latencies
        self.result.ttfb += block.ttfb


class ClientCase:
    """D from another client, on the proxy's CPU: aiohttp's (the pass-through's) or
    `proxy.upstream.calls.Pool` (the client of the proxy's own stage calls)."""

    def __init__(self, name: str, port: int, model: str, client: str) -> None:
        self.name = name
        self.port = port
        self.client = client
        self.result = Result()
        self.body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hello benchmark"}]})
        self.session: aiohttp.ClientSession | None = None
        self.pool: Pool | None = None

    async def run(self, requests: int) -> None:
        pin_self(0)
        if self.session is None and self.client == "aiohttp":
            self.session = aiohttp.ClientSession()
        if self.pool is None and self.client == "pool":
            self.pool = Pool(f"http://127.0.0.1:{self.port}/v1", 4, 5.0, {"Content-Type": "application/json"})
        for _ in range(requests):
            started = time.perf_counter()
            if self.session is not None:
                async with self.session.post(
                    f"http://127.0.0.1:{self.port}/v1/chat/completions", data=self.body, headers={"Content-Type": "application/json"}
                ) as response:
                    await response.read()
            else:
                assert self.pool is not None
                answer = await self.pool.post("/chat/completions", self.body)
                await answer.read(1 << 20)
                answer.close()
            self.result.latencies.append(time.perf_counter() - started)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.pool is not None:
            await self.pool.close()


def extension(preferences: list[str], strategy: str) -> dict:
    return {"personalization": {"preferences": preferences, "strategy": strategy}}


async def run(delay_ms: int, requests: int, rounds: int) -> list[tuple[str, dict[str, float], float]]:
    """Rows of (case, figures, target ms or nan). Every case runs `requests / rounds` requests per
    round, the cases in turn, so a change in the shared machine's load between rounds moves D and
    the cases alike instead of biasing whichever case ran in the slow minute."""
    model = f"delay-{delay_ms}"
    workdir = Path(tempfile.mkdtemp(prefix="perg-bench-aligner-"))
    fake, upstream_port = start_fake()
    gate_off, port_off = start_proxy(upstream_port, workdir, "personalization: {relevance_gate: {mode: 'off'}}", "gate-off")
    gate_on, port_on = start_proxy(upstream_port, workdir, "personalization: {relevance_gate: {mode: llm}}", "gate-on")
    cases = [
        Case("direct call = D", upstream_port, model, "", False, cpu=0),  # D as the proxy sees it: from its CPU
        Case("direct call, streaming: first chunk", upstream_port, model, "", True, cpu=0),
        ClientCase("direct call from an aiohttp client = D'", upstream_port, model, "aiohttp"),
        ClientCase("direct call from the proxy's stage client = D''", upstream_port, model, "pool"),
        Case("off", port_on, model, KEY, False, extension([STYLE], "off")),
        Case("naive", port_on, model, KEY, False, extension([STYLE], "naive")),
        Case("pref_aligner, gate off", port_off, model, KEY, False, extension([STYLE], "pref_aligner")),
        Case("pref_aligner, gate on, relevant", port_on, model, KEY, False, extension([STYLE, *UNRELATED], "pref_aligner")),
        Case("pref_aligner, gate on, only unrelated", port_on, model, KEY, False, extension(UNRELATED, "pref_aligner")),
        Case("pref_aligner streaming: first token", port_on, model, KEY, True, extension([STYLE], "pref_aligner")),
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
        pin_self(1)
        for case in cases:
            if isinstance(case, ClientCase):
                await case.close()
        for process in (gate_on, gate_off, fake):
            stop(process)
    figures = {case.name: case.result.summary() for case in cases}
    d = figures["direct call = D"]["p50_ms"]
    first_chunk = figures["direct call, streaming: first chunk"]["ttfb_p50_ms"]
    targets = {
        "off": d + 2,
        "naive": d + 2,
        "pref_aligner, gate off": 2 * d + 2,
        "pref_aligner, gate on, relevant": 2 * d + 2,
        "pref_aligner, gate on, only unrelated": d + 2,
        "pref_aligner streaming: first token": d + first_chunk + 2,
    }
    return [(case.name, figures[case.name], targets.get(case.name, float("nan"))) for case in cases]


def report(rows: list[tuple[str, dict[str, float], float]], delay_ms: int) -> None:
    print(f"fake upstream delay {delay_ms} ms per call; D = one direct call from the proxy's CPU (the load")
    print("generator's raw client); D' = the same call from an aiohttp client (the pass-through's); D'' = from")
    print("proxy/calls.py (the client of the proxy's own calls); concurrency 1\n")
    print("| case | p50 ms | p99 ms | target p50 ms | met |")
    print("|---|---|---|---|---|")
    for case, figures, target in rows:
        value = figures["ttfb_p50_ms"] if "first" in case else figures["p50_ms"]
        p99 = figures["ttfb_p99_ms"] if "first" in case else figures["p99_ms"]
        met = "" if target != target else ("yes" if value <= target else "NO")
        print(f"| {case} | {value:.2f} | {p99:.2f} | {'' if target != target else f'{target:.2f}'} | {met} |")
    by_case = {case: figures for case, figures, _ in rows}
    d = by_case["direct call = D"]["p50_ms"]
    d2 = by_case["direct call from an aiohttp client = D'"]["p50_ms"]
    d3 = by_case["direct call from the proxy's stage client = D''"]["p50_ms"]
    print(f"\nper call, an aiohttp client costs D + {d2 - d:.2f} ms and the proxy's stage client (proxy/calls.py) D + {d3 - d:.2f} ms;")
    print(
        f"over 2D: pref_aligner gate off {by_case['pref_aligner, gate off']['p50_ms'] - 2 * d:+.2f} ms, gate on {by_case['pref_aligner, gate on, relevant']['p50_ms'] - 2 * d:+.2f} ms; "
        f"streaming first token {by_case['pref_aligner streaming: first token']['ttfb_p50_ms'] - d - by_case['direct call, streaming: first chunk']['ttfb_p50_ms']:+.2f} ms over D + first chunk"
    )
    gate_cost = by_case["pref_aligner, gate on, relevant"]["p50_ms"] - by_case["pref_aligner, gate off"]["p50_ms"]
    print(f"\nthe gate (one extra, concurrent upstream call) adds {gate_cost:+.2f} ms at p50 when a preference is relevant,")
    saved = by_case["pref_aligner, gate off"]["p50_ms"] - by_case["pref_aligner, gate on, only unrelated"]["p50_ms"]
    print(f"and saves {saved:.2f} ms (the stage-2 call) when none is.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200, help="per case")
    parser.add_argument("--rounds", type=int, default=10, help="blocks per case, the cases interleaved")
    args = parser.parse_args()
    pin_self(1)
    rows = run_async(run(args.delay_ms, args.requests, args.rounds))
    report(rows, args.delay_ms)


if __name__ == "__main__":
    main()

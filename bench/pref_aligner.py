"""Benchmark: Pref-Aligner's latency against a fake upstream that answers after a fixed delay D.

    python bench/pref_aligner.py [--delay-ms 50] [--requests 200]

Every upstream call (stage 1, the gate, stage 2, a plain forward) takes D. At concurrency 1 it
prints p50 / p99 end-to-end latency of: one direct call; `off`; `naive`; `pref_aligner` with the
gate off; with the gate on and a relevant preference; with the gate on and only unrelated
preferences; and streaming time to first token. Targets: pref_aligner p50 <= 2D + 2 ms; gate on
with only unrelated preferences <= D + 2 ms (the gate runs beside stage 1); streaming TTFT <=
D + stage 2's first-chunk time + 2 ms. Bounded in request count and time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import run as run_async
from bench.common import KEY, pin_self, start_fake, start_proxy, stop  # noqa: E402
from bench.loadgen import chat_request, run_load  # noqa: E402

STYLE = "Answer in the style of a pirate."
UNRELATED = ["I have a dog named Max.", "My favourite colour is green."]


async def timed(port: int, key: str, model: str, stream: bool, requests: int, extra: dict | None = None) -> dict[str, float]:
    request = chat_request("127.0.0.1", port, "/v1/chat/completions", model, stream, key, extra)
    await run_load("127.0.0.1", port, request, concurrency=1, requests=10, max_seconds=30)
    result = await run_load("127.0.0.1", port, request, concurrency=1, requests=requests, max_seconds=300)
    if result.errors:
        raise RuntimeError(f"{result.errors} errors while measuring")
    return result.summary()


async def client_call_p50(port: int, model: str, requests: int, client: str) -> float:
    """D as another client sees it: p50 ms of sequential calls from an aiohttp client (the
    pass-through's) or from `proxy.calls.Pool` (the client of the proxy's own stage calls)."""
    import time

    import aiohttp
    import orjson

    from proxy.calls import Pool

    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hello benchmark"}]})
    latencies = []
    session = aiohttp.ClientSession() if client == "aiohttp" else None
    pool = Pool(f"http://127.0.0.1:{port}/v1", 4, 5.0, {"Content-Type": "application/json"}) if client == "pool" else None
    try:
        for index in range(requests + 10):
            started = time.perf_counter()
            if session is not None:
                async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}) as response:
                    await response.read()
            else:
                assert pool is not None
                answer = await pool.post("/chat/completions", body)
                await answer.read(1 << 20)
                answer.close()
            if index >= 10:
                latencies.append((time.perf_counter() - started) * 1000)
    finally:
        if session is not None:
            await session.close()
        if pool is not None:
            await pool.close()
    return sorted(latencies)[len(latencies) // 2]


def extension(preferences: list[str], strategy: str) -> dict:
    return {"personalization": {"preferences": preferences, "strategy": strategy}}


async def run(delay_ms: int, requests: int) -> list[tuple[str, dict[str, float], float]]:
    """Rows of (case, figures, target ms or nan)."""
    workdir = Path(tempfile.mkdtemp(prefix="perg-bench-aligner-"))
    model = f"delay-{delay_ms}"
    fake, upstream_port = start_fake()
    gate_off, port_off = start_proxy(upstream_port, workdir, "personalization: {relevance_gate: {mode: 'off'}}", "gate-off")
    gate_on, port_on = start_proxy(upstream_port, workdir, "personalization: {relevance_gate: {mode: llm}}", "gate-on")
    rows = []
    try:
        pin_self(0)  # D as the proxy sees it: one call from the proxy's CPU to the fake upstream's
        direct = await timed(upstream_port, "", model, False, requests)
        direct_stream = await timed(upstream_port, "", model, True, requests)
        d_aiohttp = await client_call_p50(upstream_port, model, requests, "aiohttp")
        d_pool = await client_call_p50(upstream_port, model, requests, "pool")
        pin_self(1)
        d = direct["p50_ms"]
        rows.append(("direct call = D", direct, float("nan")))
        rows.append(("direct call, streaming: first chunk", direct_stream, float("nan")))
        rows.append(("direct call from an aiohttp client = D'", {"p50_ms": d_aiohttp, "p99_ms": float("nan")}, float("nan")))
        rows.append(("direct call from the proxy's stage client = D''", {"p50_ms": d_pool, "p99_ms": float("nan")}, float("nan")))
        rows.append(("off", await timed(port_on, KEY, model, False, requests, extension([STYLE], "off")), d + 2))
        rows.append(("naive", await timed(port_on, KEY, model, False, requests, extension([STYLE], "naive")), d + 2))
        rows.append(("pref_aligner, gate off", await timed(port_off, KEY, model, False, requests, extension([STYLE], "pref_aligner")), 2 * d + 2))
        rows.append(("pref_aligner, gate on, relevant", await timed(port_on, KEY, model, False, requests, extension([STYLE, *UNRELATED], "pref_aligner")), 2 * d + 2))
        rows.append(("pref_aligner, gate on, only unrelated", await timed(port_on, KEY, model, False, requests, extension(UNRELATED, "pref_aligner")), d + 2))
        stream = await timed(port_on, KEY, model, True, requests, extension([STYLE], "pref_aligner"))
        rows.append(("pref_aligner streaming: first token", stream, d + direct_stream["ttfb_p50_ms"] + 2))
    finally:
        for process in (gate_on, gate_off, fake):
            stop(process)
    return rows


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
    print(f"over 2D: pref_aligner gate off {by_case['pref_aligner, gate off']['p50_ms'] - 2 * d:+.2f} ms, gate on {by_case['pref_aligner, gate on, relevant']['p50_ms'] - 2 * d:+.2f} ms; "
          f"streaming first token {by_case['pref_aligner streaming: first token']['ttfb_p50_ms'] - d - by_case['direct call, streaming: first chunk']['ttfb_p50_ms']:+.2f} ms over D + first chunk")
    gate_cost = by_case["pref_aligner, gate on, relevant"]["p50_ms"] - by_case["pref_aligner, gate off"]["p50_ms"]
    print(f"\nthe gate (one extra, concurrent upstream call) adds {gate_cost:+.2f} ms at p50 when a preference is relevant,")
    saved = by_case["pref_aligner, gate off"]["p50_ms"] - by_case["pref_aligner, gate on, only unrelated"]["p50_ms"]
    print(f"and saves {saved:.2f} ms (the stage-2 call) when none is.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    pin_self(1)
    rows = run_async(run(args.delay_ms, args.requests))
    report(rows, args.delay_ms)


if __name__ == "__main__":
    main()

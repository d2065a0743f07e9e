"""Benchmark: what the guards (and the buffering verifier) cost a Pref-Aligner stream in time to
first token, against a fake upstream whose streams drip.

    python bench/guards_ttft.py [--drip-ms 40] [--requests 40] [--rounds 4]
    python bench/guards_ttft.py --upstream-port 8081 --model smollm2-135m-instruct --requests 6 --rounds 2

Every stream from the fake upstream sends its 5 chunks (role, three pieces of text, finish) with
`--drip-ms` between them; stage 1, the gate and the verifier are non-streamed calls and answer at
once. Three proxies on the same upstream: guards off (stage 2 streams through as it comes), guards
on (the default: the rewrite is held until it is whole and checked), guards on with
`verify: llm, verify_streams: buffer` (one verifier call more before the release). It prints p50 /
p99 time to first token and total time per case, and the direct stream's own figures. The cases
run interleaved, in `--rounds` blocks each. Bounded in request count and time. With
`--upstream-port` the proxies use a real model server on that loopback port instead (`perg-proxy
local-model --port 8081`), where stage 2 and the verifier take the model's real time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import KEY, pin_self, start_fake, start_proxy, stop  # noqa: E402
from bench.common import run as run_async  # noqa: E402
from bench.pref_aligner import STYLE, Case, extension  # noqa: E402

SETUPS = {
    "guards off": "personalization: {relevance_gate: {mode: 'off'}, aligner: {guards: false}}",
    "guards on (default)": "personalization: {relevance_gate: {mode: 'off'}}",
    "guards on + verify_streams: buffer": "personalization: {relevance_gate: {mode: 'off'}, aligner: {verify: llm, verify_streams: buffer}}",
}


async def run(drip_ms: int, requests: int, rounds: int, upstream: int | None, model: str | None) -> dict[str, dict[str, float]]:
    model = model or f"drip-{drip_ms}"
    workdir = Path(tempfile.mkdtemp(prefix="perg-bench-guards-"))
    fake, upstream_port = start_fake() if upstream is None else (None, upstream)
    proxies = {}
    try:
        for index, (name, extra) in enumerate(SETUPS.items()):
            proxies[name] = start_proxy(upstream_port, workdir, extra, f"proxy-{index}")
        limits = {"max_tokens": 60, "temperature": 0}
        cases = [Case("direct stream", upstream_port, model, "", True, limits, cpu=0)]
        cases += [
            Case(name, port, model, KEY, True, {**extension([STYLE], "pref_aligner"), **limits}) for name, (_, port) in proxies.items()
        ]
        for case in cases:  # warm-up, not counted
            await case.run(4 if upstream is None else 1)
            case.result = type(case.result)()
        per_round = max(1, requests // rounds)
        for _ in range(rounds):
            for case in cases:
                await case.run(per_round)
        if upstream is not None:
            _, verify_port = proxies["guards on + verify_streams: buffer"]
            _, guarded_port = proxies["guards on (default)"]
            print(await verifier_cost(guarded_port, verify_port, model, max(2, requests // 2)))
    finally:
        pin_self(1)
        for process, _ in proxies.values():
            stop(process)
        if fake is not None:
            stop(fake)
    return {case.name: case.result.summary() for case in cases}


QUESTIONS = ("Name three primary colors.", "Why is the sky blue?", "What is the capital of France?", "How do plants make food?")


async def verifier_cost(guarded: int, verified: int, model: str, count: int) -> str:
    """Non-streamed requests to the guarded and the verifying proxy, interleaved: the verifier's
    tokens (`personalization.usage.verify`) and the added seconds per answer."""
    seconds: dict[int, list[float]] = {guarded: [], verified: []}
    tokens: list[int] = []
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        for index in range(count):
            question = QUESTIONS[index % len(QUESTIONS)]
            body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 80, "temperature": 0, "seed": index}
            body["personalization"] = {"preferences": ["Use bullet points."]}
            for port in (guarded, verified):
                started = time.perf_counter()
                async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=headers) as response:
                    data = await response.json()
                seconds[port].append(time.perf_counter() - started)
                verify = (data.get("personalization") or {}).get("usage", {}).get("verify")
                if port == verified and verify:
                    tokens.append(verify["total_tokens"])
    added = statistics.median(seconds[verified]) - statistics.median(seconds[guarded])
    spent = (
        f"median {statistics.median(tokens):.0f} tokens per verified rewrite ({len(tokens)} of {count} verified)"
        if tokens
        else "no rewrite verified"
    )
    return f"verifier, non-streamed, {count} requests each: {spent}; median answer +{added:.2f} s over the guards alone\n"


def report(figures: dict[str, dict[str, float]], drip_ms: int, real: bool) -> None:
    if real:
        print("a real model server; the gate is off, stage 1, stage 2 and the verifier take the model's time\n")
    else:
        print(f"fake upstream streams 5 chunks, {drip_ms} ms apart; stage 1, the gate (off here) and the verifier answer at once\n")
    print("| case | first token p50 ms | first token p99 ms | whole response p50 ms |")
    print("|---|---|---|---|")
    for name, row in figures.items():
        print(f"| {name} | {row['ttfb_p50_ms']:.2f} | {row['ttfb_p99_ms']:.2f} | {row['p50_ms']:.2f} |")
    off, on = figures["guards off"], figures["guards on (default)"]
    verified = figures["guards on + verify_streams: buffer"]
    print(
        f"\nholding the rewrite moves the first token from {off['ttfb_p50_ms']:.1f} ms to {on['ttfb_p50_ms']:.1f} ms "
        f"(+{on['ttfb_p50_ms'] - off['ttfb_p50_ms']:.1f} ms, the rest of stage 2's stream); the whole response "
        f"{on['p50_ms'] - off['p50_ms']:+.1f} ms; the buffering verifier adds {verified['ttfb_p50_ms'] - on['ttfb_p50_ms']:+.1f} ms more"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drip-ms", type=int, default=40)
    parser.add_argument("--requests", type=int, default=40, help="per case")
    parser.add_argument("--rounds", type=int, default=4, help="blocks per case, the cases interleaved")
    parser.add_argument("--upstream-port", type=int, help="a real model server on 127.0.0.1 instead of the fake upstream")
    parser.add_argument("--model", help="the model to ask (default: the fake's drip-<ms>)")
    args = parser.parse_args()
    pin_self(1)
    figures = run_async(run(args.drip_ms, args.requests, args.rounds, args.upstream_port, args.model))
    report(figures, args.drip_ms, args.upstream_port is not None)


if __name__ == "__main__":
    main()

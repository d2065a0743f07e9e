"""How long one big chat body holds every other client (issue 11, finding 7).

For each body: one client posts it while another sends small chat requests back to back; the
figures are the big request's status and time, and the small requests' worst and median latency
meanwhile (the event loop's stall). Bounded: 5 bodies, 3 s of small requests each at most.

    .venv/bin/python -m bench.hostile_bodies
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx2
import orjson

from bench.common import KEY, run, start_fake, start_proxy, stop

AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
SMALL = orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]})


def bodies() -> dict[str, bytes]:
    one = [{"role": "user", "content": "x"}]
    return {
        "300k messages (9 MB)": orjson.dumps({"model": "echo", "messages": one * 300_000}),
        "900k-key logit_bias (10 MB)": orjson.dumps({"model": "echo", "messages": one, "logit_bias": {str(i): 1 for i in range(900_000)}}),
        "4,096 messages of 2 KB (8 MB, accepted)": orjson.dumps(
            {"model": "echo", "messages": [{"role": "user", "content": "y" * 2000}] * 4096}
        ),
        "one 12 MB message (accepted)": orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": "z" * 12_000_000}]}),
        "extra field nested 300 deep": b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "extra": '
        + b"[" * 300
        + b"]" * 300
        + b"}",
    }


async def measure(url: str, body: bytes) -> tuple[int, float, list[float]]:
    async with httpx2.AsyncClient(timeout=60) as big_client, httpx2.AsyncClient(timeout=60) as small_client:
        await small_client.post(url, content=SMALL, headers=AUTH)  # warm connection
        started = time.perf_counter()
        big = asyncio.create_task(big_client.post(url, content=body, headers=AUTH))
        latencies: list[float] = []
        while not big.done() and time.perf_counter() - started < 3:
            sent = time.perf_counter()
            await small_client.post(url, content=SMALL, headers=AUTH)
            latencies.append(time.perf_counter() - sent)
        response = await big
        return response.status_code, time.perf_counter() - started, latencies


async def main() -> None:
    fake, fake_port = start_fake()
    with tempfile.TemporaryDirectory() as workdir:
        proxy, port = start_proxy(fake_port, Path(workdir), 'personalization: {default_strategy: "off"}')
        try:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            await measure(url, bodies()["300k messages (9 MB)"])  # starts the checking process once
            print(f"{'body':42} {'status':>6} {'big ms':>8} {'small p50 ms':>13} {'small max ms':>13}")
            for name, body in bodies().items():
                status, took, small = await measure(url, body)
                p50 = statistics.median(small) * 1000 if small else float("nan")
                worst = max(small) * 1000 if small else float("nan")
                print(f"{name:42} {status:>6} {took * 1000:>8.0f} {p50:>13.1f} {worst:>13.1f}")
        finally:
            stop(proxy)
            stop(fake)


if __name__ == "__main__":
    run(main())

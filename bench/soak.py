"""A soak run: a steady request rate for a fixed time, sampling a process tree's RSS as it goes.

Open loop: each of `connections` keep-alive connections sends on its own fixed schedule
(rate / connections per second), half of them plain requests and half streaming, so a slow
answer delays the next request of that connection only and the offered rate stays put.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field

from bench.loadgen import Result, _read_response, failure
from bench.memory import tree_rss_kib


@dataclass
class Soak:
    result: Result = field(default_factory=Result)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, KiB)
    warmup_seconds: float = 0.0
    late: int = 0

    def after_warmup(self) -> list[tuple[float, int]]:
        return [sample for sample in self.rss if sample[0] >= self.warmup_seconds]

    def summary(self) -> dict[str, float]:
        kept = [kib for _, kib in self.after_warmup()]
        first, last, peak = kept[0], kept[-1], max(kept)
        return {
            **self.result.summary(),
            "late": self.late,
            "error_kinds": dict(self.result.error_kinds),
            "seconds": self.result.wall,
            "warmup_s": self.warmup_seconds,
            "rss_first_mib": first / 1024,
            "rss_last_mib": last / 1024,
            "rss_max_mib": peak / 1024,
            "rss_min_mib": min(kept) / 1024,
            "growth_last_pct": (last / first - 1) * 100,
            "growth_max_pct": (peak / first - 1) * 100,
        }


async def _paced_worker(host: str, port: int, request: bytes, start: float, interval: float, end: float, soak: Soak) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    result, scheduled = soak.result, start
    try:
        while scheduled < end:
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                soak.late += delay < -interval
            sent = time.perf_counter()
            writer.write(request)
            try:
                status, first = await asyncio.wait_for(_read_response(reader), 60)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError) as error:
                result.fail(failure(error))
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                scheduled += interval
                continue
            elapsed = time.perf_counter() - sent
            if status == 200:
                result.latencies.append(elapsed)
                result.ttfb.append(first if first is not None else elapsed)
            else:
                result.fail(f"HTTP {status}")
            scheduled += interval
    finally:
        writer.close()


async def _sample_rss(pid: int, started: float, every: float, soak: Soak) -> None:
    next_report = started + 60
    while True:
        now = time.perf_counter()
        soak.rss.append((now - started, tree_rss_kib(pid)))
        if now >= next_report:
            done, mib = soak.result.count, soak.rss[-1][1] / 1024
            print(
                f"  soak {now - started:5.0f}s: {done} answered, {soak.result.errors} errors, RSS {mib:.1f} MiB",
                file=sys.stderr,
                flush=True,
            )
            next_report += 60
        await asyncio.sleep(every)


async def run_soak(
    host: str, port: int, requests: tuple[bytes, bytes], pid: int, *, rate: float, seconds: float, connections: int = 16
) -> Soak:
    """`requests` is (plain, streaming); RSS of `pid`'s tree is sampled every 5 s."""
    soak = Soak(warmup_seconds=min(120.0, seconds * 0.2))
    interval = connections / rate
    started = time.perf_counter()
    end = started + seconds
    sampler = asyncio.create_task(_sample_rss(pid, started, 5.0, soak), name="soak-rss")
    workers = [
        _paced_worker(host, port, requests[index % 2], started + index * interval / connections, interval, end, soak)
        for index in range(connections)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*workers), seconds + 120)
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    soak.rss.append((time.perf_counter() - started, tree_rss_kib(pid)))
    soak.result.wall = time.perf_counter() - started
    return soak

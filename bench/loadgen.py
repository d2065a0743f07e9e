"""A small, low-overhead HTTP/1.1 load generator (asyncio streams, keep-alive, pre-built requests).

It measures, per request, the time to the first token (the first chunk with non-empty `content`
of an event stream; the body of anything else) and to the end of the body, so one tool times
both plain and streaming responses. Every run is bounded by a request
count and a deadline.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

import orjson


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    errors: int = 0
    wall: float = 0.0

    @property
    def count(self) -> int:
        return len(self.latencies)

    def percentile(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict[str, float]:
        return {
            "requests": self.count,
            "errors": self.errors,
            "rps": self.count / self.wall if self.wall else 0.0,
            "p50_ms": self.percentile(self.latencies, 0.50) * 1000,
            "p99_ms": self.percentile(self.latencies, 0.99) * 1000,
            "ttfb_p50_ms": self.percentile(self.ttfb, 0.50) * 1000,
            "ttfb_p99_ms": self.percentile(self.ttfb, 0.99) * 1000,
        }


def chat_request(host: str, port: int, path: str, model: str, stream: bool, key: str = "", extra: dict | None = None) -> bytes:
    """One pre-built HTTP request; `extra` adds body fields (a `personalization` extension, say)."""
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hello benchmark"}], "stream": stream, **(extra or {})})
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


CONTENT = re.compile(rb'"content":\s?"[^"]')


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, float | None]:
    """Read one response; return (status, seconds to the first token): for an event stream, the
    first chunk carrying non-empty `content`; otherwise the body."""
    started = time.perf_counter()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    first: float | None = None
    if b"transfer-encoding: chunked" in lower:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if first is None and size and CONTENT.search(data):
                first = time.perf_counter() - started
            if size == 0:
                break
            del data
    else:
        index = lower.index(b"content-length:")
        length = int(lower[index + 15 : lower.index(b"\r\n", index)])
        await reader.readexactly(length)
        first = time.perf_counter() - started
    return status, first


async def _worker(host: str, port: int, request: bytes, budget: list[int], deadline: float, result: Result) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            started = time.perf_counter()
            writer.write(request)
            try:
                status, first = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                result.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            elapsed = time.perf_counter() - started
            if status != 200:
                result.errors += 1
                continue
            result.latencies.append(elapsed)
            result.ttfb.append(first if first is not None else elapsed)
    finally:
        writer.close()


async def run_load(host: str, port: int, request: bytes, *, concurrency: int, requests: int, max_seconds: float) -> Result:
    result = Result()
    budget = [requests]
    deadline = time.perf_counter() + max_seconds
    started = time.perf_counter()
    await asyncio.gather(*(_worker(host, port, request, budget, deadline, result) for _ in range(concurrency)))
    result.wall = time.perf_counter() - started
    return result

"""A small, low-overhead HTTP/1.1 load generator (asyncio streams, keep-alive, pre-built requests).

It measures, per request, the time to the first token (the first chunk with non-empty `content`
of an event stream; the body of anything else) and to the end of the body, so one tool times
both plain and streaming responses. Every run is bounded by a request
count and a deadline, and cut off `grace_seconds` after the deadline: requests still open then
are counted as errors. A 200 event stream counts as an error unless it ends with `data: [DONE]`
and carries no `"error"` event (errors sent in-band after the stream started).
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
    error_kinds: dict[str, int] = field(default_factory=dict)

    def fail(self, kind: str, count: int = 1) -> None:
        """Count `count` failed requests of one kind (an HTTP status, a broken stream, ...)."""
        if count:
            self.errors += count
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + count

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


def chat_request(
    host: str,
    port: int,
    path: str,
    model: str,
    stream: bool,
    key: str = "",
    extra: dict | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """One pre-built HTTP request; `extra` adds body fields (a `personalization` extension, say),
    `headers` adds request headers (a gateway's routing headers, say)."""
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hello benchmark"}], "stream": stream, **(extra or {})})
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


CONTENT = re.compile(rb'"content":\s?"[^"]')
IN_BAND_ERROR = re.compile(rb'(^|\n)(event: error|data: \{"error")')


class BrokenStream(ValueError):
    """A 200 event stream that carried an error event or ended without `data: [DONE]`."""


def failure(error: BaseException) -> str:
    """A short name for why a request failed, for the error breakdown."""
    if isinstance(error, BrokenStream):
        return "stream with an error event or without [DONE]"
    if isinstance(error, asyncio.IncompleteReadError):
        return "connection closed mid-response"
    return type(error).__name__


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, float | None]:
    """Read one response; return (status, seconds to the first token): for an event stream, the
    first chunk carrying non-empty `content`; otherwise the body."""
    started = time.perf_counter()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    first: float | None = None
    if b"transfer-encoding: chunked" in lower:
        tail, failed = b"", False
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if first is None and size and CONTENT.search(data):
                first = time.perf_counter() - started
            if size == 0:
                break
            failed = failed or bool(IN_BAND_ERROR.search(tail + data))
            tail = (tail + data[:-2])[-32:]
            del data
        if status == 200 and b"text/event-stream" in lower and (failed or b"data: [DONE]" not in tail):
            raise BrokenStream(tail.decode("utf-8", "replace"))
    else:
        index = lower.index(b"content-length:")
        length = int(lower[index + 15 : lower.index(b"\r\n", index)])
        await reader.readexactly(length)
        first = time.perf_counter() - started
    return status, first


@dataclass
class _Run:
    """State the workers of one run share; `deadline` is set when the timed phase starts."""

    request: bytes
    budget: int
    max_seconds: float
    result: Result
    barrier: asyncio.Barrier | None = None
    deadline: float = 0.0
    started: float = 0.0

    def start_clock(self) -> None:
        if not self.started:
            self.started = time.perf_counter()
            self.deadline = self.started + self.max_seconds


async def _warm(host: str, port: int, run: _Run, each: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open this worker's connection, send `each` unrecorded requests on it, wait for the others."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
        for _ in range(each):
            writer.write(run.request)
            await _read_response(reader)
    except BaseException:
        if run.barrier is not None:
            await run.barrier.abort()
        raise
    if run.barrier is not None:
        await run.barrier.wait()
    run.start_clock()
    return reader, writer


async def _worker(host: str, port: int, run: _Run, warmup_each: int) -> None:
    reader, writer = await _warm(host, port, run, warmup_each)
    result = run.result
    try:
        while run.budget > 0 and time.perf_counter() < run.deadline:
            run.budget -= 1
            started = time.perf_counter()
            writer.write(run.request)
            try:
                status, first = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError, ValueError) as error:
                result.fail(failure(error))
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            elapsed = time.perf_counter() - started
            if status != 200:
                result.fail(f"HTTP {status}")
                continue
            result.latencies.append(elapsed)
            result.ttfb.append(first if first is not None else elapsed)
    finally:
        writer.close()


async def run_load(
    host: str,
    port: int,
    request: bytes,
    *,
    concurrency: int,
    requests: int,
    max_seconds: float,
    grace_seconds: float = 30.0,
    warmup_each: int = 0,
) -> Result:
    """`warmup_each` > 0: every connection is opened and sends that many unrecorded requests, and
    the timed phase (deadline, wall clock) starts once all are ready: steady state, without the
    connection set-up. Otherwise each worker starts timing as soon as it is connected."""
    run = _Run(request, requests, max_seconds, Result(), asyncio.Barrier(concurrency) if warmup_each else None)
    if not warmup_each:
        run.start_clock()
    workers = [asyncio.ensure_future(_worker(host, port, run, warmup_each)) for _ in range(concurrency)]
    done, pending = await asyncio.wait(workers, timeout=max_seconds + grace_seconds + (60 if warmup_each else 0))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    # a worker still waiting for an answer, or one that could not (re)connect, is one failed request
    result = run.result
    result.fail("still open at the cut-off", len(pending))
    result.fail("could not connect", sum(1 for task in done if task.exception() is not None))
    result.wall = time.perf_counter() - (run.started or time.perf_counter())
    return result

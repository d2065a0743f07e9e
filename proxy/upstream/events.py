"""Server-sent events: encoding, framing and reading (the writer is `server/responses.py`).

An error can only be reported in band once a stream has started: an `event: error` whose data is
the OpenAI error object (the openai SDKs raise `APIError` on it), then `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from ..errors import ProxyError, error_payload

HEARTBEAT = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
_DONE_MARKERS = (b"data: [DONE]", b"data:[DONE]")


def data_event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def error_event(error: BaseException) -> bytes:
    _, body, _ = error_payload(error)
    return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"


class EventFramer:
    """Cuts a byte stream after its last complete event; the incomplete tail waits for more."""

    __slots__ = ("_pending", "saw_done")

    def __init__(self) -> None:
        self._pending = b""
        self.saw_done = False

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        end = max(data.rfind(b"\n\n") + 2, data.rfind(b"\r\n\r\n") + 4, data.rfind(b"\r\r") + 2)
        if end < 2:
            self._pending = data
            return b""
        complete, self._pending = data[:end], data[end:]
        if not self.saw_done and (_DONE_MARKERS[0] in complete or _DONE_MARKERS[1] in complete):
            self.saw_done = True
        return complete

    @property
    def pending(self) -> bytes:
        return self._pending


EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class UpstreamEventError(ProxyError):
    """An upstream event stream that broke its protocol: an error event, bad JSON, no [DONE]."""

    status = 502
    type = "upstream_error"
    code = "upstream_stream_broken"


async def read_events(
    next_chunk: Callable[[float], Awaitable[bytes]], deadline: float, idle: float, upstream: str
) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an upstream's `data:` events, until `data: [DONE]`, by `deadline`.

    `next_chunk(timeout)` gives the next bytes (b"" at the end) or raises `TimeoutError`; one
    timer covers both limits, the silence of `idle` seconds and the deadline."""
    loop = asyncio.get_running_loop()
    buffer = b""
    while True:
        try:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            chunk = await next_chunk(min(idle, remaining))
        except TimeoutError:
            if loop.time() >= deadline:
                raise UpstreamEventError(f"upstream {upstream}'s stream did not finish in time") from None
            raise UpstreamEventError(f"upstream {upstream} sent nothing for {idle:g} s mid-stream") from None
        if not chunk:
            raise UpstreamEventError(f"upstream {upstream}'s stream ended without [DONE]")
        buffer += chunk
        while (match := EVENT_END.search(buffer)) is not None:
            raw, buffer = buffer[: match.start()], buffer[match.end() :]
            name, data = _parse_event(raw)
            if data is None:
                continue
            if data == b"[DONE]":
                return
            yield _event_object(name, data, upstream)


def _parse_event(raw: bytes) -> tuple[bytes | None, bytes | None]:
    name, data = None, []
    for line in raw.splitlines():
        if line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
        elif line.startswith(b"event:"):
            name = line[6:].strip()
    return name, (b"\n".join(data) if data else None)


def _event_object(name: bytes | None, data: bytes, upstream: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamEventError(f"upstream {upstream} sent an event that is not JSON") from None
    if not isinstance(value, dict):
        raise UpstreamEventError(f"upstream {upstream} sent an event that is not a JSON object")
    if name == b"error" or (isinstance(value.get("error"), dict) and "choices" not in value):
        error = value["error"] if isinstance(value.get("error"), dict) else {}
        raise UpstreamEventError(f"upstream {upstream} reported an error mid-stream: {error.get('message', 'unknown')}")
    return value

"""Server-sent events: encoding, framing and reading (the writer is `server/responses.py`).

An error can only be reported in band once a stream has started: an `event: error` whose data is
the OpenAI error object (the openai SDKs raise `APIError` on it), then `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import orjson

from ..errors import ProxyError, error_payload

HEARTBEAT = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


def data_event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def error_event(error: BaseException) -> bytes:
    _, body, _ = error_payload(error)
    return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"


class ServerEvent(NamedTuple):
    """One event of an event stream: its type (`event:`, default "message"), its data (the
    `data:` lines joined by newlines; None when the block had none, a comment-only block say)
    and the bytes it came in, its closing blank line included."""

    name: bytes
    data: bytes | None
    raw: bytes


class EventParser:
    """The event-stream interpretation of the HTML standard (§9.2.6), fed bytes as they come.

    Lines end at CRLF, LF or CR; a blank line ends an event; `:` starts a comment; a field's
    value loses one leading space; `data` lines accumulate, `event` names the type, other fields
    (`id`, `retry`) are kept in the raw bytes only. A CR at the end of a chunk waits for the next
    one, which may start with the LF of the same CRLF."""

    __slots__ = ("_block", "_data", "_name", "_tail")

    def __init__(self) -> None:
        self._tail = b""  # the unfinished line
        self._block: list[bytes] = []  # raw bytes of the unfinished event's finished lines
        self._data: list[bytes] = []
        self._name = b""

    def feed(self, chunk: bytes) -> list[ServerEvent]:
        buffer = self._tail + chunk if self._tail else chunk
        if b"\r" not in buffer:
            return self._feed_lf(buffer)
        events: list[ServerEvent] = []
        start = 0
        for match in LINE_END.finditer(buffer):
            if match.end() == len(buffer) and match.group() == b"\r":
                break  # maybe the first half of a CRLF
            line, end = buffer[start : match.start()], match.end()
            self._block.append(buffer[start:end])
            start = end
            if line:
                self._field(line)
                continue
            raw = b"".join(self._block)
            events.append(ServerEvent(self._name or b"message", b"\n".join(self._data) if self._data else None, raw))
            self._block, self._data, self._name = [], [], b""
        self._tail = buffer[start:]
        return events

    def _feed_lf(self, buffer: bytes) -> list[ServerEvent]:
        """`feed` for bytes whose lines all end in LF (what servers send): split, not searched."""
        lines = buffer.split(b"\n")
        tail = lines.pop()  # the unfinished line; b"" when the buffer ends with a line break
        events: list[ServerEvent] = []
        start = block = 0  # where the current line, and this buffer's part of the current event, begin
        for line in lines:
            start += len(line) + 1
            if line:
                self._field(line)
                continue
            self._block.append(buffer[block:start])
            raw = b"".join(self._block)
            events.append(ServerEvent(self._name or b"message", b"\n".join(self._data) if self._data else None, raw))
            self._block, self._data, self._name = [], [], b""
            block = start
        if block < start:
            self._block.append(buffer[block:start])
        self._tail = tail
        return events

    def _field(self, line: bytes) -> None:
        if line.startswith(b":"):
            return
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._name = value

    @property
    def idle(self) -> bool:
        """Between events: nothing of an unfinished event or line is held."""
        return not self._tail and not self._block

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet complete."""
        return b"".join(self._block) + self._tail


class EventFramer:
    """Cuts a byte stream after its last complete event; the incomplete tail waits for more.

    The stream is over at the event whose data is exactly `[DONE]` (`saw_done`): that event is
    the last one passed on, and whatever follows it is dropped. `[DONE]` anywhere else (inside a
    chunk's text, a comment, another field) is just text."""

    __slots__ = ("_parser", "saw_done")

    def __init__(self) -> None:
        self._parser = EventParser()
        self.saw_done = False

    def feed(self, chunk: bytes) -> bytes:
        if self.saw_done:
            return b""
        if self._parser.idle and chunk.endswith(b"\n\n"):  # whole events: it ends with a blank line after a line break
            at = chunk.find(DONE_DATA)
            if at == -1:
                return chunk  # none of them [DONE]
            if at == len(chunk) - 8 and (chunk == DONE or chunk.endswith(LAST_DONE)):
                self.saw_done = True  # the only [DONE] is the data of the last event, alone after a blank line
                return chunk
        events = self._parser.feed(chunk)
        if not events:
            return b""
        for index, event in enumerate(events):
            if event.data == DONE_DATA:
                self.saw_done = True
                events = events[: index + 1]
                break
        return events[0].raw if len(events) == 1 else b"".join(event.raw for event in events)

    @property
    def pending(self) -> bytes:
        return self._parser.pending


LINE_END = re.compile(rb"\r\n|\r|\n")
DONE_DATA = b"[DONE]"
LAST_DONE = b"\n\n" + DONE  # a [DONE] event after the blank line that ended the one before it


class UpstreamEventError(ProxyError):
    """An upstream event stream that broke its protocol: an error event, bad JSON, no [DONE]."""

    status = 502
    type = "upstream_error"
    code = "upstream_stream_broken"


async def read_events(
    next_chunk: Callable[[float], Awaitable[bytes]], deadline: float, idle: float, upstream: str
) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an upstream's `data:` events, until the event whose data is exactly
    `[DONE]`, by `deadline`.

    `next_chunk(timeout)` gives the next bytes (b"" at the end) or raises `TimeoutError`; one
    timer covers both limits, the silence of `idle` seconds and the deadline."""
    loop = asyncio.get_running_loop()
    parser = EventParser()
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
        for event in parser.feed(chunk):
            if event.data is None:
                continue
            if event.data == DONE_DATA:
                return
            yield _event_object(event.name, event.data, upstream)


def _event_object(name: bytes, data: bytes, upstream: str) -> dict[str, Any]:
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

"""`sse.read_events`, the reader of the event streams the proxy asks for itself (stage 2), and the
timing of each such upstream call."""

from __future__ import annotations

import asyncio
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.upstream.events import EventFramer, EventParser, UpstreamEventError, read_events


def feeder(*chunks: bytes, stall: float = 0.0):
    """A `next_chunk(timeout)` that gives `chunks`, then b"" (the end), or stalls forever."""
    pending = list(chunks)

    async def next_chunk(timeout: float) -> bytes:
        if pending:
            return pending.pop(0)
        if stall:
            async with asyncio.timeout(timeout):
                await asyncio.sleep(stall)
        return b""

    return next_chunk


async def events(next_chunk, deadline_in: float = 5.0, idle: float = 5.0) -> list[dict]:
    deadline = asyncio.get_running_loop().time() + deadline_in
    return [event async for event in read_events(next_chunk, deadline, idle, "up")]


async def test_events_split_anywhere_are_read_whole():
    stream = b'data: {"a": 1}\n\ndata: {"b":\ndata: 2}\r\n\r\n: comment\n\ndata: [DONE]\n\n'
    for size in (1, 3, 7, len(stream)):
        pieces = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert await events(feeder(*pieces)) == [{"a": 1}, {"b": 2}]


async def test_a_stream_without_done_is_an_error():
    with pytest.raises(UpstreamEventError, match="ended without"):
        await events(feeder(b'data: {"a": 1}\n\n'))


async def test_an_error_event_is_raised():
    with pytest.raises(UpstreamEventError, match="overloaded"):
        await events(feeder(b'event: error\ndata: {"error": {"message": "overloaded"}}\n\n'))


async def test_silence_longer_than_idle_is_an_error():
    with pytest.raises(UpstreamEventError, match=r"sent nothing for 0\.1 s"):
        await events(feeder(b'data: {"a": 1}\n\n', stall=10), idle=0.1)


async def test_the_deadline_ends_a_stream_that_keeps_trickling():
    async def trickle(timeout: float) -> bytes:
        await asyncio.sleep(0.05)
        return b": still here\n\n"

    with pytest.raises(UpstreamEventError, match="did not finish in time"):
        await events(trickle, deadline_in=0.3, idle=1.0)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, "ok"),
        (UpstreamEventError("x"), "upstream_stream_broken"),
        (asyncio.CancelledError(), "cancelled"),
        (RuntimeError("a bug"), "error"),
    ],
)
def test_each_upstream_call_is_timed_with_its_outcome(error, outcome):
    from types import SimpleNamespace

    from proxy.metrics import Metrics
    from proxy.upstream.exchange import Timed

    metrics = Metrics()
    client = SimpleNamespace(_metrics=metrics, name="up")
    try:
        with Timed(client, "stage2"):  # type: ignore[arg-type]
            if error is not None:
                raise error
    except BaseException as raised:  # noqa: BLE001 - re-raised unchanged is what is checked
        assert raised is error
    count = metrics.registry.get_sample_value(
        "perg_upstream_duration_seconds_count", {"upstream": "up", "stage": "stage2", "outcome": outcome}
    )
    assert count == 1


LINES = st.sampled_from(
    [b'data: {"a": 1}', b"data:[DONE]", b"data: [DONE]", b"data: text with [DONE] inside", b": keep-alive", b"event: x", b"id: 7"]
)
ENDINGS = st.sampled_from([b"\n", b"\n", b"\n", b"\r\n", b"\r"])
EVENTS = st.lists(st.tuples(st.lists(st.tuples(LINES, ENDINGS), min_size=1, max_size=3), ENDINGS), max_size=12)


@settings(max_examples=400, deadline=None)
@given(events=EVENTS, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_the_framer_passes_whole_events_up_to_done_however_the_stream_is_cut(events, cuts):
    """What the pass-through relays of an event stream: whole events only, in order, up to and
    including the first `[DONE]` event, whatever the chunks (the fast path for chunks that end
    with a blank line included), the same as one parser fed everything at once."""
    lines = [line for event, blank in events for line in [*event, (b"", blank)]]
    stream = b"".join(line + ending for line, ending in lines)
    expected, done = b"", False
    for event in EventParser().feed(stream):
        expected += event.raw
        if event.data == b"[DONE]":
            done = True
            break
    framer, out = EventFramer(), b""
    bounds = sorted({cut for cut in cuts if cut < len(stream)})
    for start, end in zip([0, *bounds], [*bounds, len(stream)], strict=True):
        piece = framer.feed(stream[start:end])
        out += piece
        assert not piece or expected.startswith(out)
    assert framer.saw_done == done
    assert out == expected


def reference_events(stream: bytes) -> list[tuple[bytes, bytes | None]]:
    """The event-stream interpretation written out plainly (HTML §9.2.6): (type, data) per event;
    a CR at the very end may be half a CRLF, so its line is not finished."""
    if stream.endswith(b"\r"):
        stream = stream[:-1]
    lines = re.split(rb"\r\n|\r|\n", stream)[:-1]  # the last piece is an unfinished line
    events, data, name = [], [], b""
    for line in lines:
        if not line:
            events.append((name or b"message", b"\n".join(data) if data else None))
            data, name = [], b""
            continue
        if line.startswith(b":"):
            continue
        field, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value
    return events


@settings(max_examples=400, deadline=None)
@given(events=EVENTS, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_the_parser_reads_events_as_the_standard_does_however_the_stream_is_cut(events, cuts):
    lines = [line for event, blank in events for line in [*event, (b"", blank)]]
    stream = b"".join(line + ending for line, ending in lines)
    parser, read = EventParser(), []
    bounds = sorted({cut for cut in cuts if cut < len(stream)})
    for start, end in zip([0, *bounds], [*bounds, len(stream)], strict=True):
        read += parser.feed(stream[start:end])
    assert [(event.name, event.data) for event in read] == reference_events(stream)
    assert b"".join(event.raw for event in read) + parser.pending == stream


@pytest.mark.parametrize(
    ("chunks", "relayed", "done"),
    [
        ([b'data: {"a": 1}\n\ndata: [DONE]\n\n'], b'data: {"a": 1}\n\ndata: [DONE]\n\n', True),
        ([b"data: [DONE]\n\n"], b"data: [DONE]\n\n", True),
        ([b"data: x\n\n", b"data: [DONE]\n\n", b"data: after\n\n"], b"data: x\n\ndata: [DONE]\n\n", True),
        # [DONE] as the second data line of an event is not the end of the stream
        ([b"data: x\ndata: [DONE]\n\n"], b"data: x\ndata: [DONE]\n\n", False),
        # two [DONE] events in one chunk: the stream ends at the first
        ([b"data: [DONE]\n\ndata: [DONE]\n\n"], b"data: [DONE]\n\n", True),
        ([b"data: x\r\n\r\ndata: [DONE]\n\n"], b"data: x\r\n\r\ndata: [DONE]\n\n", True),
    ],
)
def test_a_chunk_that_ends_with_the_done_event_is_relayed_whole_and_ends_the_stream(chunks, relayed, done):
    framer = EventFramer()
    assert b"".join(framer.feed(chunk) for chunk in chunks) == relayed
    assert framer.saw_done is done

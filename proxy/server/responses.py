"""Writing a `StreamReply` to a client, and the proxy's own response headers.

Chunks are written as they arrive, never buffered past an event boundary. Once a stream has
started, an error can only be reported in band (`upstream/events.py`). A stream that ends without
the upstream's `[DONE]` is an error too, so a dead upstream never looks like a finished answer.

Every write to the client has a deadline (`server.write_timeout_seconds`): a client that stops
reading has its connection closed and its upstream call cancelled, so it cannot hold an upstream
connection (or the pool) past that.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from aiohttp import web

from ..errors import ProxyError
from ..turn import Reply, StreamReply, Turn
from ..upstream.events import DONE, HEARTBEAT, EventFramer, error_event

CAPTURE_LIMIT = 1024 * 1024

log = structlog.get_logger("perg.sse")


class StreamEndedEarly(ProxyError):
    status = 502
    type = "upstream_error"
    code = "upstream_stream_incomplete"


class ClientTooSlow(ConnectionError):
    """The client did not take a write within the write deadline; its connection is closed."""


def _fits(request: web.Request, size: int) -> bool:
    """`size` more bytes keep the client's transport under its high-water mark, so a write of
    them returns without waiting for the client to read."""
    transport = request.transport
    return transport is not None and transport.get_write_buffer_size() + size <= transport.get_write_buffer_limits()[1]


def _head_size(response: web.StreamResponse) -> int:
    """The bytes of a response's status line and headers (an upstream's are relayed), with 1 KiB
    of room for the ones aiohttp adds when it sends them."""
    return 1024 + sum(len(name) + len(value.encode("utf-8", "surrogateescape")) + 4 for name, value in response.headers.items())


async def write_within(request: web.Request, response: web.StreamResponse, data: bytes, timeout: float) -> None:
    if _fits(request, len(data) + 1024):
        await response.write(data)  # stays under the high-water mark (with room for chunk framing): cannot wait
        return
    try:
        async with asyncio.timeout(timeout):
            await response.write(data)
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()
        raise ClientTooSlow(f"the client read nothing for {timeout:g} s") from None


async def send_reply(request: web.Request, turn: Turn, reply: Reply, timeout: float) -> web.StreamResponse:
    """A complete reply, written here (not after the handler) so its write has the deadline too."""
    headers = reply.headers
    if "Content-Type" not in headers:
        headers["Content-Type"] = "application/json"
    response = web.Response(status=reply.status, body=reply.body, headers=headers)
    turn.status = reply.status
    apply_turn_headers(response, turn)
    try:
        if _fits(request, len(reply.body) + _head_size(response)):  # the transport takes it all at once: no wait to bound
            await response.prepare(request)
            await response.write_eof()
        else:
            async with asyncio.timeout(timeout):
                await response.prepare(request)
                await response.write_eof()
    except TimeoutError:
        turn.error_code = "client_write_timeout"
        if request.transport is not None:
            request.transport.abort()
    except (ConnectionResetError, ConnectionError):
        turn.error_code = "client_disconnected"
    return response


def apply_turn_headers(response: web.StreamResponse, turn: Turn) -> None:
    """The proxy's own response headers; set before the response starts."""
    headers = response.headers
    headers["x-request-id"] = turn.request_id
    if turn.strategy is not None:
        headers["x-perg-strategy"] = turn.strategy
    if turn.aligned is not None:
        headers["x-perg-aligned"] = turn.aligned
    headers["x-perg-overhead-ms"] = f"{turn.overhead() * 1000:.3f}"


async def send_stream(request: web.Request, turn: Turn, reply: StreamReply, timeout: float) -> web.StreamResponse:
    """Write `reply` to the client chunk by chunk; errors after the start go in band."""
    response = web.StreamResponse(status=reply.status, headers=reply.headers)
    if not response.headers.get("Content-Type", "").startswith(reply.content_type):  # else already so (a relayed one)
        response.content_type = reply.content_type
    if reply.sse:
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
    turn.status = reply.status
    try:
        apply_turn_headers(response, turn)
        await response.prepare(request)
        await _pump(request, response, turn, reply, timeout)
    except ProxyError as error:
        await _fail(request, response, turn, reply, error, timeout)
    except ClientTooSlow:
        turn.error_code = "client_write_timeout"
        return response
    except (ConnectionResetError, ConnectionError):
        turn.error_code = "client_disconnected"
        return response
    except Exception as error:  # reported in band, never as a traceback
        log.exception("stream_failed", request_id=turn.request_id)
        await _fail(request, response, turn, reply, error, timeout)
    finally:
        await reply.close()
    return response


async def _pump(request: web.Request, response: web.StreamResponse, turn: Turn, reply: StreamReply, timeout: float) -> None:
    framer = EventFramer() if reply.sse else None
    async for chunk in reply.chunks:
        if framer is not None:
            chunk = framer.feed(chunk)
            if not chunk:
                continue
        if turn.first_token_at is None and chunk != HEARTBEAT:
            turn.first_token_at = turn.elapsed()
        if turn.captured is not None and len(turn.captured) < CAPTURE_LIMIT:
            turn.captured += chunk
        started = time.perf_counter()
        await write_within(request, response, chunk, timeout)
        turn.client_wait += time.perf_counter() - started
    if framer is not None and reply.expect_done and not framer.saw_done:
        raise StreamEndedEarly("the upstream stream ended without its end-of-stream marker ([DONE])")
    await response.write_eof()


async def _fail(
    request: web.Request, response: web.StreamResponse, turn: Turn, reply: StreamReply, error: BaseException, timeout: float
) -> None:
    turn.error_code = getattr(error, "code", None) or "internal_error"
    if not response.prepared:
        raise error
    if not reply.sse:
        # A byte stream has no in-band error: cut the connection so the body is visibly incomplete.
        if request.transport is not None:
            request.transport.abort()
        return
    try:
        await write_within(request, response, error_event(error) + DONE, timeout)
        await response.write_eof()
    except ClientTooSlow:
        turn.error_code = "client_write_timeout"
    except (ConnectionResetError, ConnectionError):
        turn.error_code = "client_disconnected"

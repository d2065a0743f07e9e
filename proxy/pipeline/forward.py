"""Byte pass-through to an upstream: the `off` strategy, `naive`'s single call, and `/v1/*`.

A response the client will read as a stream (SSE, or a body of unknown or large size) becomes a
`StreamReply` that forwards chunks as they arrive; a small body is read whole and returned with
its length.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import orjson

from .. import telemetry
from ..errors import UpstreamProtocolError
from ..turn import Reply, StreamReply, Turn
from ..upstream.client import UpstreamClient
from ..upstream.exchange import UpstreamResponse
from ..upstream.headers import client_response_headers

BUFFER_LIMIT = 1024 * 1024
SSE_DONE_PATHS = ("/chat/completions", "/completions")


async def forward(
    turn: Turn,
    upstream: UpstreamClient,
    method: str,
    path: str,
    *,
    data: bytes | None,
    headers: Mapping[str, str],
    query: str = "",
    stage: str = "forward",
) -> Reply | StreamReply:
    """Send one request upstream and hand back its response, streamed when it should be."""
    traced = telemetry.upstream_call(upstream.name, upstream.settings.base_url, stage, path=path, model=turn.model, method=method)
    try:
        response = await upstream.send(method, path, headers=traced.inject(headers), data=data, query=query, stage=stage)
    except BaseException as error:
        traced.__exit__(type(error), error, None)
        raise
    try:
        turn.upstream_wait += response.waited
        response.waited = 0.0
        content_type = response.headers.get("Content-Type", "")
        # a compressed event stream is relayed as bytes: its events cannot be read unless inflated
        sse = content_type.startswith("text/event-stream") and "Content-Encoding" not in response.headers
        if sse or content_type.startswith("text/event-stream") or _large_or_unknown(response):
            return StreamReply(
                status=response.status,
                headers=client_response_headers(response.headers, encoded=True),
                chunks=response.chunks(),
                close=functools.partial(_close, traced, turn, response),
                content_type=content_type.split(";", 1)[0].strip() or "application/octet-stream",
                sse=sse,
                expect_done=sse and path in SSE_DONE_PATHS,
            )
        body = await response.read()
    except BaseException as error:
        _end(traced, turn, response, error)
        raise
    traced.response_body(body)
    _end(traced, turn, response, None)
    return Reply(status=response.status, headers=client_response_headers(response.headers, encoded=True), body=body)


def _large_or_unknown(response: UpstreamResponse) -> bool:
    length = response.headers.get("Content-Length")
    return length is None or not (length.isascii() and length.isdigit()) or int(length) > BUFFER_LIMIT


def _end(traced: telemetry.CallTrace, turn: Turn, response: UpstreamResponse, error: BaseException | None) -> None:
    """The exchange is over: its upstream time counted, the connection freed, the call's span ended."""
    turn.upstream_wait += response.waited
    response.waited = 0.0
    try:
        response.close(error)
    finally:
        traced.__exit__(None if error is None else type(error), error, None)


async def _close(traced: telemetry.CallTrace, turn: Turn, response: UpstreamResponse) -> None:
    """A relayed stream's `close`, once the client's write loop is over."""
    _end(traced, turn, response, None)


def completion_usage(reply: Reply, upstream: str) -> dict[str, Any] | None:
    """The `usage` of a 200 chat completion relayed whole; a body that is not a JSON object is a
    502, never bytes an SDK fails to decode. A compressed body is relayed as sent, unread."""
    if "Content-Encoding" in reply.headers:
        return None
    try:
        data = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(f"upstream {upstream} answered a chat completion with a body that is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamProtocolError(f"upstream {upstream} answered a chat completion with JSON that is not an object")
    usage = data.get("usage")
    return usage if isinstance(usage, dict) else None

"""Byte pass-through to an upstream: the `off` strategy, `naive`'s single call, and `/v1/*`.

A response the client will read as a stream (SSE, or a body of unknown or large size) becomes a
`StreamReply` that forwards chunks as they arrive; a small body is read whole and returned with
its length.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

import orjson

from ..turn import Reply, StreamReply, Turn
from ..upstream.client import UpstreamClient, UpstreamResponse
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
    stack = AsyncExitStack()
    response = await stack.enter_async_context(upstream.open(method, path, headers=headers, data=data, query=query, stage=stage))
    turn.upstream_wait += response.waited
    response.waited = 0.0
    try:
        content_type = response.headers.get("Content-Type", "")
        if content_type.startswith("text/event-stream") or _large_or_unknown(response):
            return StreamReply(
                status=response.status,
                headers=client_response_headers(response.headers, encoded=True),
                chunks=response.chunks(),
                close=lambda: _close(stack, turn, response),
                sse=content_type.startswith("text/event-stream"),
                expect_done=path in SSE_DONE_PATHS,
            )
        body = await response.read()
    except BaseException:
        await stack.aclose()
        raise
    await _close(stack, turn, response)
    return Reply(status=response.status, headers=client_response_headers(response.headers, encoded=True), body=body)


def _large_or_unknown(response: UpstreamResponse) -> bool:
    length = response.headers.get("Content-Length")
    return length is None or not length.isdigit() or int(length) > BUFFER_LIMIT


async def _close(stack: AsyncExitStack, turn: Turn, response: UpstreamResponse) -> None:
    turn.upstream_wait += response.waited
    response.waited = 0.0
    await stack.aclose()


def usage_of(body: bytes) -> dict[str, Any] | None:
    """The `usage` object of a JSON chat completion, if it has one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    usage = data.get("usage") if isinstance(data, dict) else None
    return usage if isinstance(usage, dict) else None

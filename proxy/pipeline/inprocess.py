"""Answering a chat request inside the proxy, without HTTP: for the monitor's references and
shadow runs, canary probes and the offline benchmark, which must use exactly the served code."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import CallFailed, UpstreamProtocolError
from ..turn import Reply, StreamReply, Turn
from .context import PipelineContext
from .strategies import serve_chat

READ_LIMIT = 64 * 1024 * 1024  # as for the proxy's own calls (`upstream.client.ANSWER_LIMIT`)


async def read_whole(reply: Reply | StreamReply) -> bytes:
    """The whole body of a reply, at most `READ_LIMIT` bytes; a `StreamReply` (an upstream that
    sent no length) is read and closed."""
    if isinstance(reply, Reply):
        return reply.body
    parts, size = [], 0
    try:
        async for chunk in reply.chunks:
            size += len(chunk)
            if size > READ_LIMIT:
                raise UpstreamProtocolError(f"the answer is larger than {READ_LIMIT} bytes")
            parts.append(chunk)
        return b"".join(parts)
    finally:
        await reply.close()


async def complete(
    ctx: PipelineContext, request_id: str, body: dict[str, Any], strategy: str, preferences: tuple[str, ...]
) -> tuple[dict[str, Any], Turn]:
    """The completion `strategy` gives to a request (not streamed), and the turn that made it.
    An upstream failure raises as on the request path; a non-200 reply or one without choices
    raises `CallFailed`."""
    body = {key: value for key, value in body.items() if key not in ("stream", "stream_options")}
    turn = Turn(request_id=request_id, route="inprocess", method="POST", headers={}, body=body)
    turn.model, turn.strategy, turn.preferences = body["model"], strategy, preferences
    reply = await serve_chat(turn, ctx)
    payload = await read_whole(reply)
    if reply.status != 200:
        raise CallFailed(f"http_{reply.status}", payload[:200].decode("utf-8", "replace"))
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise CallFailed("api_error", "the answer is not JSON") from None
    if not isinstance(data, dict) or not data.get("choices"):
        raise CallFailed("empty", "no choices in the answer")
    return data, turn

"""The strategies for `POST /v1/responses`, as `strategies.py` has them for chat.

* `off` (or no preferences): one call. A `native` upstream gets the client's bytes and its answer
  is relayed as sent (a stream unbuffered, checked to end with a terminal event); a `via_chat`
  one gets the request as a chat completion and its answer comes back as a response.
* `naive`: the preferences go into `instructions`, after the client's own; one call.
* `pref_aligner`: `responses_aligner.py`, streamed `responses_aligner_stream.py`.

The proxy keeps no state: `store`, `previous_response_id` … go to a `native` upstream as sent; a
`via_chat` upstream refuses what needs state with a 400 (`upstream/responses_chat.py`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson
import structlog

from .. import telemetry
from ..errors import ProxyError, UpstreamProtocolError
from ..prompts.loader import preference_lines
from ..turn import Reply, StreamReply, Turn
from ..upstream.adapt import adapt_chat_body
from ..upstream.client import UpstreamClient
from ..upstream.events import EventParser
from ..upstream.headers import upstream_request_headers
from ..upstream.responses_chat import to_chat
from ..upstream.responses_events import error_event, is_terminal
from ..upstream.responses_from_chat import ChatStreamTranslator, from_chat
from ..upstream.responses_probe import responses_mode
from .aligner_stream import started
from .context import PipelineContext
from .forward import forward
from .responses_aligner import json_headers, serve_responses_aligner
from .responses_aligner_stream import stream_aligned

log = structlog.get_logger("perg.responses")
PATH = "/responses"


async def serve_responses(turn: Turn, ctx: PipelineContext) -> Reply | StreamReply:
    assert turn.body is not None
    upstream = ctx.upstreams.for_model(turn.model or "")
    mode = await responses_mode(upstream)
    if mode == "via_chat":
        to_chat(turn.body)  # what cannot be translated is a 400 before anything goes out
    if turn.strategy == "off":
        return await forward_responses(turn, upstream, mode)
    if not turn.preferences:
        ctx.metrics.aligner_outcomes.labels(turn.strategy or "off", "no_preferences").inc()
        telemetry.annotate(outcome="no_preferences")
        return await forward_responses(turn, upstream, mode)
    if turn.strategy == "naive":
        turn.aligned = "true"
        ctx.metrics.aligner_outcomes.labels("naive", "aligned").inc()
        telemetry.annotate(outcome="aligned")
        return await forward_responses(turn, upstream, mode, with_instructions(turn.body, ctx, turn.preferences))
    if turn.stream:
        return await stream_aligned(turn, ctx, upstream, mode)
    return await serve_responses_aligner(turn, ctx, upstream, mode)


def with_instructions(body: dict[str, Any], ctx: PipelineContext, preferences: tuple[str, ...]) -> dict[str, Any]:
    """The request with the naive prompt's preferences after the client's own instructions."""
    note = ctx.prompts.naive.render_system(preferences=preference_lines(preferences))
    own = body.get("instructions")
    return {**body, "instructions": f"{own}\n\n{note}" if isinstance(own, str) and own.strip() else note}


async def forward_responses(turn: Turn, upstream: UpstreamClient, mode: str, body: dict[str, Any] | None = None) -> Reply | StreamReply:
    """One call upstream: the client's request, or `body` instead."""
    turn.aligned = turn.aligned or "false"
    if mode == "via_chat":
        return await via_chat(turn, upstream, body or turn.body or {})
    settings = upstream.settings
    headers = upstream_request_headers(turn.headers, turn.request_id, settings.api_key, settings.headers)
    headers["Content-Type"] = "application/json"
    if turn.stream:  # the proxy reads the events (to see the stream end): they must come uncompressed
        headers.popall("Accept-Encoding", None)
    data = turn.forward_body() if body is None else orjson.dumps(body)
    reply = await forward(turn, upstream, "POST", PATH, data=data, headers=headers)
    if isinstance(reply, StreamReply) and reply.sse:
        reply.chunks = to_the_end(reply.chunks, upstream.name)
    elif isinstance(reply, Reply) and reply.status == 200 and "Content-Encoding" not in reply.headers:
        turn.usage = response_usage(reply.body, upstream.name)
        upstream.count_usage(turn.model, "forward", turn.usage)
    return reply


def response_usage(body: bytes, upstream: str) -> dict[str, Any] | None:
    """The `usage` of a response relayed whole; a body that is not a JSON object is a 502."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(f"upstream {upstream} answered a response request with a body that is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamProtocolError(f"upstream {upstream} answered a response request with JSON that is not an object")
    usage = data.get("usage")
    return usage if isinstance(usage, dict) else None


async def to_the_end(chunks: AsyncIterator[bytes], upstream: str) -> AsyncIterator[bytes]:
    """A relayed Responses stream, chunk by chunk, cut after complete events; a break or an end
    before a terminal event (`response.completed`, `.failed`, `.incomplete`, `error`) becomes an
    `error` event, so a broken stream never reads as a finished one."""
    parser = EventParser()
    seen = 0
    try:
        async for chunk in chunks:
            events = parser.feed(chunk)
            if not events:
                continue
            seen += len(events)
            yield b"".join(event.raw for event in events)
            if any(is_terminal(event) for event in events):
                return
        raise UpstreamProtocolError(f"upstream {upstream}'s response stream ended before its response was complete")
    except ProxyError as error:
        yield error_event(error, seen)


async def via_chat(turn: Turn, upstream: UpstreamClient, body: dict[str, Any]) -> Reply | StreamReply:
    chat = adapt_chat_body(to_chat(body), upstream.dialect)  # json_schema, max_completion_tokens: as the upstream takes them
    timeout = upstream.settings.timeouts.total
    if not turn.stream:
        with turn.waiting():
            result = await upstream.chat(chat, request_id=turn.request_id, timeout=timeout, stage="forward")
        turn.usage = result.data.get("usage") if isinstance(result.data.get("usage"), dict) else None
        return Reply(200, json_headers(result.headers), orjson.dumps(from_chat(result.data, body)))
    return await started(turn, chat_events(turn, upstream, chat, body), expect_done=False)


async def chat_events(turn: Turn, upstream: UpstreamClient, chat: dict[str, Any], body: dict[str, Any]) -> AsyncGenerator[bytes, None]:
    """A chat stream as Responses events; an upstream failure before the first chunk raises (its
    status kept), one after it ends the stream with `response.failed`."""
    translator = ChatStreamTranslator(body)
    pieces = upstream.stream_chat(chat, request_id=turn.request_id, timeout=upstream.settings.timeouts.total, stage="forward")
    try:
        async for piece in turn.waited(pieces):
            if piece.get("usage"):
                turn.usage = piece["usage"]
            if out := translator.feed(piece):
                yield out
        yield translator.finish()
    except ProxyError as error:
        if translator.events is None:
            raise
        log.warning("responses_stream_failed", request_id=turn.request_id, error=error.code)
        turn.error_code = error.code
        yield translator.events.fail(error)
    finally:
        await pieces.aclose()  # type: ignore[attr-defined]

"""The strategies, and which one serves a chat request.

* `off`: the client's request goes upstream untouched (its very bytes when nothing was taken out
  and nothing needs adapting to the upstream: `upstream/adapt.py`).
* `naive`: the paper's baseline: the preferences go into a system message; one call.
* `pref_aligner`: stage 1 without preferences, then the rewrite (`aligner`, `aligner_stream`).

A request without preferences is forwarded as `off` whatever its strategy: there is nothing to
personalize (`x-perg-aligned: false`).
"""

from __future__ import annotations

from typing import Any

import orjson

from .. import telemetry
from ..prompts.loader import preference_lines
from ..turn import Reply, StreamReply, Turn
from ..upstream.adapt import adapt_chat_body
from ..upstream.headers import upstream_request_headers
from .aligner import serve_pref_aligner
from .aligner_stream import serve_pref_aligner_stream
from .context import PipelineContext
from .forward import completion_usage, forward


async def serve_chat(turn: Turn, ctx: PipelineContext) -> Reply | StreamReply:
    if turn.strategy == "off":
        return await forward_chat(turn, ctx)
    if not turn.preferences:
        ctx.metrics.aligner_outcomes.labels(turn.strategy or "off", "no_preferences").inc()
        telemetry.annotate(outcome="no_preferences")
        return await forward_chat(turn, ctx)
    if turn.strategy == "naive":
        return await serve_naive(turn, ctx)
    if turn.stream:
        return await serve_pref_aligner_stream(turn, ctx)
    return await serve_pref_aligner(turn, ctx)


async def forward_chat(turn: Turn, ctx: PipelineContext, body: dict[str, Any] | None = None) -> Reply | StreamReply:
    """One call upstream, streamed through as is: the client's request, or `body` instead."""
    turn.aligned = turn.aligned or "false"
    upstream = ctx.upstreams.for_model(turn.model or "")
    settings = upstream.settings
    headers = upstream_request_headers(turn.headers, turn.request_id, settings.api_key, settings.headers)
    headers["Content-Type"] = "application/json"
    if turn.stream:  # the proxy reads the events (their [DONE]): they must come uncompressed
        headers.popall("Accept-Encoding", None)
    sent = turn.body if body is None else body
    assert sent is not None
    adapted = adapt_chat_body(sent, upstream.dialect)
    data = turn.forward_body() if body is None and adapted is sent else orjson.dumps(adapted)
    reply = await forward(turn, upstream, "POST", "/chat/completions", data=data, headers=headers)
    if isinstance(reply, Reply) and reply.status == 200:
        turn.usage = completion_usage(reply, upstream.name)
        upstream.count_usage(turn.model, "forward", turn.usage)
    return reply


async def serve_naive(turn: Turn, ctx: PipelineContext) -> Reply | StreamReply:
    assert turn.body is not None
    body = {**turn.body, "messages": with_preferences(turn.body["messages"], ctx, turn.preferences)}
    turn.aligned = "true"
    ctx.metrics.aligner_outcomes.labels("naive", "aligned").inc()
    telemetry.annotate(outcome="aligned")
    return await forward_chat(turn, ctx, body)


def with_preferences(messages: list[dict[str, Any]], ctx: PipelineContext, preferences: tuple[str, ...]) -> list[dict[str, Any]]:
    """The messages with a system message of preferences after the leading system/developer ones."""
    note = {"role": "system", "content": ctx.prompts.naive.render_system(preferences=preference_lines(preferences))}
    lead = 0
    while lead < len(messages) and messages[lead].get("role") in ("system", "developer"):
        lead += 1
    return [*messages[:lead], note, *messages[lead:]]

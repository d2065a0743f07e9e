"""Pref-Aligner for a streamed `POST /v1/responses`: SSE heartbeats every `heartbeat_seconds`
while stage 1 (and the gate) run, then the response's events.

With the guards on (the default) or a buffering verifier, every rewrite is made and checked whole
(`responses_aligner.aligned_response`), then the whole response is sent (`replay`). With them off,
stage 2 streams as it comes, as chat's does: `response.created` goes out once stage 1 is done,
items that are not rewritten are sent as they are, a rewrite's text as it arrives; a stage 2 that
fails before any text serves the draft, one that fails mid-way ends in `response.failed`.
A failure before the first heartbeat raises (its HTTP status kept); after it, an `error` event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import suppress
from typing import Any

import structlog

from ..errors import ProxyError
from ..turn import StreamReply, Turn
from ..upstream.client import UpstreamClient
from ..upstream.events import HEARTBEAT
from ..upstream.responses_chat import listed, obj
from ..upstream.responses_events import ResponseEvents, error_event, replay, replay_item
from .aligner import Outcome, RewritePlan, aligner_body, personalization_field, preset, record
from .aligner_stream import StageTwoBroke, started, stream_outcome
from .chat import add_usage
from .context import PipelineContext
from .responses_aligner import aligned_response, message_text, plan, rewritable, served_usage
from .rewrite import RewriteFilter
from .verify import wants_verify

log = structlog.get_logger("perg.aligner")


async def stream_aligned(turn: Turn, ctx: PipelineContext, upstream: UpstreamClient, mode: str) -> StreamReply:
    return await started(turn, aligned_events(turn, ctx, upstream, mode), expect_done=False)


async def aligned_events(turn: Turn, ctx: PipelineContext, upstream: UpstreamClient, mode: str) -> AsyncGenerator[bytes, None]:
    hold = ctx.settings.aligner.guards or wants_verify(ctx, stream=True)
    work: asyncio.Task[Any] = asyncio.create_task(aligned_response(turn, ctx, upstream, mode) if hold else plan(turn, ctx, upstream, mode))
    started = False
    try:
        while not work.done():
            await asyncio.wait({work}, timeout=ctx.heartbeat_seconds)
            if not work.done():
                started = True
                yield HEARTBEAT
        try:
            result = work.result()
        except Exception as error:
            if not started:
                raise
            if not isinstance(error, ProxyError):
                log.exception("responses_aligner_failed", request_id=turn.request_id)
            turn.error_code = getattr(error, "code", None) or "internal_error"
            yield error_event(error, 0)
            return
        if hold:
            yield b"".join(replay(result[0]))
        else:
            async for chunk in streamed_rewrites(turn, ctx, *result):
                yield chunk
        if started:
            turn.aligned = "pending"  # as the headers said; the final event's `personalization` has the outcome
    finally:
        if not work.done():
            work.cancel()
            with suppress(BaseException):
                await work


async def streamed_rewrites(turn: Turn, ctx: PipelineContext, p: RewritePlan, response: dict[str, Any]) -> AsyncIterator[bytes]:
    """The response's events, each message item's rewrite streamed as stage 2 writes it."""
    events = ResponseEvents(response)
    yield events.start()
    allowed, incomplete = rewritable(response, turn.body or {}), response.get("status") == "incomplete"
    outcomes: list[Outcome] = []
    try:
        for item in response.get("output") or []:
            text = message_text(item)
            if text is None:
                yield replay_item(events, item)
                continue
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length" if incomplete else "stop"}
            done = preset(choice, turn, p.relevant, guards=False) if allowed else Outcome(text, "unchanged", "false", draft=text)
            if done is not None:
                outcomes.append(done)
                yield replay_item(events, item)
                continue
            async for chunk in stream_item(turn, ctx, p, events, item, choice, outcomes):
                yield chunk
    except ProxyError as error:
        log.warning("responses_stage2_broke", request_id=turn.request_id, error=error.code)
        turn.error_code = error.code
        record(turn, ctx, outcomes)
        yield events.fail(error)
        return
    record(turn, ctx, outcomes)
    usage = p.usage
    for outcome in outcomes:
        usage = add_usage(usage, outcome.usage)
    turn.usage = usage
    reason = obj(response.get("incomplete_details")).get("reason") if incomplete else None
    extra = {"personalization": personalization_field(turn, p, outcomes)}
    yield events.finish(served_usage(response.get("usage"), usage), reason, extra)


async def stream_item(
    turn: Turn, ctx: PipelineContext, p: RewritePlan, events: ResponseEvents, item: dict[str, Any], choice: dict[str, Any], outcomes: list
) -> AsyncIterator[bytes]:
    """One message item's rewrite as it streams; its Outcome is appended to `outcomes`."""
    draft = choice["message"]["content"]
    upstream, model = ctx.stage_target(ctx.settings.aligner, turn.model or "")
    body = {**aligner_body(turn, ctx, model, p.query, draft, p.relevant), "stream_options": {"include_usage": True}}
    parser = RewriteFilter(ctx.prompts.aligner.headings)
    state: dict[str, Any] = {"started": False, "finish": None, "usage": None}
    item_id = str(item.get("id") or "msg_perg")
    pieces = upstream.stream_chat(body, request_id=turn.request_id, timeout=ctx.settings.aligner.timeout_seconds, stage="stage2")
    try:
        async for piece in turn.waited(pieces):
            state["usage"] = piece.get("usage") or state["usage"]
            for part in listed(piece.get("choices")):
                state["finish"] = obj(part).get("finish_reason") or state["finish"]
                delta = obj(obj(part).get("delta")).get("content")
                if isinstance(delta, str) and delta and (out := parser.feed(delta)):
                    state["started"] = True
                    yield events.text(out, item_id)
        if tail := parser.finish():
            state["started"] = True
            yield events.text(tail, item_id)
    except ProxyError as error:
        if state["started"]:
            raise StageTwoBroke(f"the aligner's stream broke: {error.message}") from error
        outcomes.append(Outcome(draft, "fallback", "fallback", choice["finish_reason"], state["usage"], reason=error.code, draft=draft))
        yield replay_item(events, item)
        return
    finally:
        await pieces.aclose()  # type: ignore[attr-defined]
    outcome = stream_outcome(parser, state, draft, choice)
    outcomes.append(outcome)
    yield events.close_message() if outcome.outcome == "aligned" else replay_item(events, item)

"""Pref-Aligner, streaming: stage 1 runs to completion while the client gets SSE heartbeats, then
stage 2 streams as ordinary `chat.completion.chunk` events with the stage-1 id and model.

The response starts when its first event is ready, or after `server.heartbeat_seconds` with a
heartbeat: a stage-1 error before then keeps its HTTP status; later ones go in band. With the
guards on (the default) or a buffering verifier, stage 2 is held until it is whole, checked like a
non-streamed rewrite, and sent at once if it passes, else the draft is (`fallback`): the checks
need the rewrite's end. With the guards off it streams as it comes; failing before it produced any
text streams the draft instead, failing mid-way is an in-band error. With `n > 1` every choice is
rewritten concurrently and the chunks interleave.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import nullcontext, suppress
from typing import Any

from multidict import CIMultiDict

from ..errors import ProxyError
from ..turn import StreamReply, Turn
from ..upstream.events import DONE, HEARTBEAT, data_event
from .aligner import Outcome, RewritePlan, aligned_header, aligner_body, judge_rewrite, personalization_field, plan, preset, record, usable
from .chat import add_usage, chunk, delta_choice, stream_template
from .context import PipelineContext
from .rewrite import RewriteFilter
from .verify import verify_rewrite, wants_verify


class StageTwoBroke(ProxyError):
    status = 502
    type = "upstream_error"
    code = "aligner_stream_broken"


async def serve_pref_aligner_stream(turn: Turn, ctx: PipelineContext) -> StreamReply:
    return await started(turn, stream_events(turn, ctx))


async def started(turn: Turn, events: AsyncGenerator[bytes, None], *, expect_done: bool = True) -> StreamReply:
    """The event stream as a reply once its first event is in: a failure before it is raised (the
    client gets its status), a heartbeat first means the answer is still pending."""
    try:
        first = await events.__anext__()
    except BaseException:
        await events.aclose()
        raise
    if first is HEARTBEAT:
        turn.aligned = "pending"
    headers = CIMultiDict({"Content-Type": "text/event-stream"})
    return StreamReply(200, headers, prepend(first, events), events.aclose, expect_done=expect_done)


async def prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for item in rest:
        yield item


async def stream_events(turn: Turn, ctx: PipelineContext) -> AsyncGenerator[bytes, None]:
    """The response's events; a heartbeat whenever `heartbeat_seconds` pass without one. Events
    that are ready at the same moment go out together, in one write."""
    interval = ctx.heartbeat_seconds
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    stages = asyncio.create_task(run_stages(turn, ctx, queue))
    p: RewritePlan | None = None
    template: dict[str, Any] = {}
    outcomes: dict[int, Outcome] = {}
    usage = None
    announced = False
    try:
        while p is None or len(outcomes) < len(p.draft.get("choices") or []):
            try:
                # Stage 1 counts its own upstream wait; from then on, waiting here is stage 2's.
                with turn.waiting() if p is not None else nullcontext():
                    async with asyncio.timeout(interval):
                        ready = [await queue.get()]
            except TimeoutError:
                yield HEARTBEAT
                continue
            while not queue.empty():
                ready.append(queue.get_nowait())
            events: list[bytes] = []
            failure: BaseException | None = None
            for index, item in ready:
                if isinstance(item, BaseException):
                    failure = item
                    break
                if isinstance(item, RewritePlan):
                    p, template, usage = item, stream_template(item.draft), item.usage
                elif isinstance(item, Outcome):
                    outcomes[index] = item
                    usage = add_usage(add_usage(usage, item.usage), item.verify_usage)
                else:
                    header = item.pop("_header", None)
                    if not announced:
                        announced = True
                        if turn.aligned != "pending":
                            turn.aligned = aligned_header(list(outcomes.values())) if outcomes else (header or "true")
                    events.append(data_event(chunk(template, [item])))
            if events:
                yield b"".join(events)
            if failure is not None:
                raise failure
    finally:
        if not stages.done():
            stages.cancel()
            with suppress(BaseException):
                await stages
    ordered = [outcomes[i] for i in sorted(outcomes)]
    record_stream(turn, ctx, ordered)
    yield final_event(turn, template, ordered, usage, p) + DONE


async def run_stages(turn: Turn, ctx: PipelineContext, queue: asyncio.Queue) -> None:
    """Stage 1 and the gate, then stage 2 of every choice, in one task: its results, chunks and
    failures all go on `queue` (stage 1's as a `RewritePlan` at index -1), none is lost."""
    try:
        p = await plan(turn, ctx)
        queue.put_nowait((-1, p))
        choices = p.draft.get("choices") or []
        if len(choices) == 1:  # the usual case: stage 2 goes out at once, from this task
            await produce(turn, ctx, p, 0, choices[0], queue)
        else:
            async with asyncio.TaskGroup() as group:
                for index, choice in enumerate(choices):
                    group.create_task(produce(turn, ctx, p, index, choice, queue))
    except Exception as error:  # noqa: BLE001 - handed to the response, which reports it
        queue.put_nowait((-1, error))


def record_stream(turn: Turn, ctx: PipelineContext, outcomes: list[Outcome]) -> None:
    pending = turn.aligned == "pending"
    record(turn, ctx, outcomes)
    if pending:
        turn.aligned = "pending"


def final_event(
    turn: Turn, template: dict[str, Any], outcomes: list[Outcome], usage: dict[str, int] | None, p: RewritePlan | None
) -> bytes:
    """The last chunk (no choices): `usage` when asked for; `personalization` when a draft was
    asked for, the outcome is still `pending` in the headers, or usage was asked for."""
    extra: dict[str, Any] = {}
    wants_usage = ((turn.body or {}).get("stream_options") or {}).get("include_usage")
    if turn.return_draft or turn.aligned == "pending" or wants_usage:
        field = personalization_field(turn, p, outcomes)
        field["aligned"] = aligned_header(outcomes)
        extra["personalization"] = field
    if wants_usage and usage is not None:
        extra["usage"] = usage
    turn.usage = usage
    return data_event(chunk(template, [], **extra)) if extra else b""


async def produce(turn: Turn, ctx: PipelineContext, p: RewritePlan, index: int, choice: dict[str, Any], queue: asyncio.Queue) -> None:
    """Put this choice's chunks on the queue, then its Outcome (or an exception to raise)."""
    try:
        done = preset(choice, turn, p.relevant, ctx.settings.aligner.guards)
        outcome = done if done is not None else await stream_rewrite(turn, ctx, p, index, choice, queue)
        if outcome.outcome != "aligned":
            await put_whole(queue, index, outcome, choice)
        await queue.put((index, delta_choice(index, {}, outcome.finish_reason)))
        await queue.put((index, outcome))
    except ProxyError as error:
        await queue.put((index, error))


async def put_whole(queue: asyncio.Queue, index: int, outcome: Outcome, choice: dict[str, Any]) -> None:
    message = choice.get("message") or {}
    delta: dict[str, Any] = {"role": "assistant", "content": outcome.text if isinstance(message.get("content"), str) else None}
    for key in ("tool_calls", "refusal", "function_call"):
        if message.get(key) is not None:
            delta[key] = _indexed(message[key]) if key == "tool_calls" else message[key]
    first = delta_choice(index, delta)
    first["_header"] = outcome.header
    await queue.put((index, first))


def _indexed(tool_calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"index": i, **call} for i, call in enumerate(tool_calls)]


async def stream_rewrite(
    turn: Turn, ctx: PipelineContext, p: RewritePlan, index: int, choice: dict[str, Any], queue: asyncio.Queue
) -> Outcome:
    """Stream stage 2 for one choice; the Outcome says what happened (aligned text already queued).
    With the guards or a buffering verifier, the rewrite is held until it is whole and checked."""
    hold = ctx.settings.aligner.guards or wants_verify(ctx, stream=True)
    draft = choice["message"]["content"]
    upstream, model = ctx.stage_target(ctx.settings.aligner, turn.model or "")
    body = aligner_body(turn, ctx, model, p.query, draft, p.relevant)
    if ((turn.body or {}).get("stream_options") or {}).get("include_usage"):
        body["stream_options"] = {"include_usage": True}
    parser = RewriteFilter(ctx.prompts.aligner.headings)
    state: dict[str, Any] = {"started": False, "finish": None, "usage": None}
    try:
        async for piece in upstream.stream_chat(
            body, request_id=turn.request_id, timeout=ctx.settings.aligner.timeout_seconds, stage="stage2"
        ):
            await forward_piece(piece, parser, state, index, None if hold else queue)
        tail = parser.finish()
        if tail and not hold:
            await emit(tail, state, index, queue)
    except ProxyError as error:
        if state["started"]:
            raise StageTwoBroke(f"the aligner's stream broke: {error.message}") from error
        return Outcome(draft, "fallback", "fallback", choice.get("finish_reason"), state["usage"], reason=error.code, draft=draft)
    if hold:
        return await release_checked(turn, ctx, p, parser, state, draft, choice, index, queue)
    return stream_outcome(parser, state, draft, choice)


async def release_checked(
    turn: Turn,
    ctx: PipelineContext,
    p: RewritePlan,
    parser: RewriteFilter,
    state: dict[str, Any],
    draft: str,
    choice: dict[str, Any],
    index: int,
    queue: asyncio.Queue,
) -> Outcome:
    """A held rewrite, whole: checked as a non-streamed one is, then queued if it passed."""
    finish, draft_finish = state["finish"], choice.get("finish_reason")
    outcome = judge_rewrite(ctx, p, parser.text, parser.unchanged, finish, draft, draft_finish, state["usage"])
    outcome = await verify_rewrite(turn, ctx, p.query, outcome, stream=True)
    if outcome.outcome == "aligned":
        await emit(outcome.text, state, index, queue)
    return outcome


async def forward_piece(
    piece: dict[str, Any], parser: RewriteFilter, state: dict[str, Any], index: int, queue: asyncio.Queue | None
) -> None:
    """Feed one upstream chunk to the parser; what is certain goes on `queue` (None: held)."""
    if piece.get("usage"):
        state["usage"] = piece["usage"]
    for part in piece.get("choices") or []:
        state["finish"] = part.get("finish_reason") or state["finish"]
        text = (part.get("delta") or {}).get("content")
        if isinstance(text, str) and text:
            out = parser.feed(text)
            if out and queue is not None:
                await emit(out, state, index, queue)


async def emit(text: str, state: dict[str, Any], index: int, queue: asyncio.Queue) -> None:
    if not state["started"]:
        state["started"] = True
        await queue.put((index, delta_choice(index, {"role": "assistant", "content": ""})))
    await queue.put((index, delta_choice(index, {"content": text})))


def stream_outcome(parser: RewriteFilter, state: dict[str, Any], draft: str, choice: dict[str, Any]) -> Outcome:
    usage, draft_finish = state["usage"], choice.get("finish_reason")
    if state["started"]:
        finish = "length" if state["finish"] == "length" else draft_finish
        return Outcome(parser.text, "aligned", "true", finish, usage, draft=draft)
    if parser.unchanged:
        return Outcome(draft, "unchanged", "skipped", draft_finish, usage, draft=draft)
    reason = "unusable_reply" if not usable(parser.text) else "empty_reply"
    return Outcome(draft, "fallback", "fallback", draft_finish, usage, reason=reason, draft=draft)

"""Pref-Aligner: stage 1 answers without preferences; stage 2 rewrites that answer to fit them.

Stage 1 gets the client's request exactly (minus streaming), with no preference anywhere. The
relevance gate runs at the same time. Stage 2 gets only the last user query, the stage-1 answer and
the relevant preferences, never the client's system prompt. The client never loses the stage-1
answer because of stage 2: any failure of it serves the draft (`x-perg-aligned: fallback`).
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from multidict import CIMultiDict

from .. import telemetry
from ..errors import ProxyError, UpstreamProtocolError
from ..prompts.loader import preference_lines
from ..turn import Reply, Turn
from ..upstream.adapt import adapt_chat_body
from .chat import add_usage, first_content, keep_as_is, last_user_query, served_unchanged
from .context import PipelineContext
from .gate import relevant_preferences
from .guards import check_rewrite, structured_draft
from .rewrite import parse_rewrite
from .verify import verify_rewrite

log = structlog.get_logger("perg.aligner")
HEADER_PRIORITY = ("fallback", "true", "skipped", "false")


@dataclass(slots=True)
class RewritePlan:
    """Stage 1 is done: the draft completion, the relevant preferences, usage so far."""

    draft: dict[str, Any]
    headers: CIMultiDict[str]
    query: str
    relevant: tuple[str, ...]
    usage: dict[str, int] | None
    stage1_usage: dict[str, int] | None = None
    gate_usage: dict[str, int] | None = None


@dataclass(slots=True)
class Outcome:
    """What is served for one choice."""

    text: str
    outcome: str  # aligned | skipped | unchanged | fallback
    header: str  # true | skipped | false | fallback
    finish_reason: str | None = None
    usage: Any = None
    reason: str | None = None
    draft: str = field(default="")
    verify_usage: Any = None


def stage1_body(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key not in ("stream", "stream_options")}


async def plan(turn: Turn, ctx: PipelineContext) -> RewritePlan:
    """Run stage 1 and, concurrently, the relevance gate."""
    assert turn.body is not None
    query = last_user_query(turn.body["messages"])
    gate = None
    if ctx.settings.relevance_gate.mode == "llm" and not served_unchanged(turn.body):
        gate = asyncio.create_task(relevant_preferences(turn, ctx, query))
    upstream = ctx.upstreams.for_model(turn.model or "")
    try:
        with turn.waiting():
            stage1 = await upstream.chat(
                adapt_chat_body(stage1_body(turn.body), upstream.dialect),
                request_id=turn.request_id,
                timeout=upstream.settings.timeouts.total,
                stage="stage1",
            )
            relevant, gate_usage = await gate if gate is not None else (turn.preferences, None)
    finally:
        if gate is not None and not gate.done():
            gate.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await gate  # stage 1 failed: the gate's answer is not needed
    draft = checked_draft(stage1.data, turn.body.get("n") or 1)
    stage1_usage, gate_usage = add_usage(None, draft.get("usage")), add_usage(None, gate_usage)
    usage = add_usage(stage1_usage, gate_usage)
    return RewritePlan(draft, stage1.headers, query, relevant, usage, stage1_usage, gate_usage)


def checked_draft(data: dict[str, Any], n: int) -> dict[str, Any]:
    """Stage 1's completion as stage 2 reads it, else a 502 naming what is wrong; at most `n`
    choices (the request's), so an upstream cannot make stage 2 fan out wider than asked."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not all(isinstance(choice, dict) for choice in choices):
        raise UpstreamProtocolError("stage 1's answer has no list of choice objects in 'choices'")
    if any(not isinstance(choice.get("message"), dict | None) for choice in choices):
        raise UpstreamProtocolError("stage 1's answer has a choice whose 'message' is not an object")
    if not isinstance(data.get("usage"), dict | None):
        raise UpstreamProtocolError("stage 1's answer has a 'usage' that is not an object")
    return {**data, "choices": choices[:n]} if len(choices) > n else data


def aligner_body(turn: Turn, ctx: PipelineContext, model: str, query: str, draft: str, relevant: tuple[str, ...]) -> dict[str, Any]:
    prompt = ctx.prompts.aligner
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": prompt.render_user(query=query, answer=draft, preferences=preference_lines(relevant))},
        ],
    }
    asked = turn.body or {}
    limit = (
        ctx.settings.aligner.max_tokens or asked.get("max_completion_tokens") or asked.get("max_tokens") or asked.get("max_output_tokens")
    )
    if limit:
        body["max_tokens"] = limit
    for key in ("temperature", "seed"):
        if turn.body and key in turn.body:
            body[key] = turn.body[key]
    return body


def preset(choice: dict[str, Any], turn: Turn, relevant: tuple[str, ...], guards: bool = True) -> Outcome | None:
    """The outcome of a choice that needs no stage 2, or None when it must be rewritten. With the
    guards on, a structured draft (JSON, one fenced block) is never rewritten."""
    message = choice.get("message") or {}
    content = message.get("content")
    draft = content if isinstance(content, str) else ""
    if keep_as_is(choice, turn.body or {}) or (guards and structured_draft(draft)):
        return Outcome(draft, "unchanged", "false", choice.get("finish_reason"), draft=draft)
    if not relevant:
        return Outcome(draft, "skipped", "skipped", choice.get("finish_reason"), draft=draft)
    return None


async def rewrite_choice(turn: Turn, ctx: PipelineContext, p: RewritePlan, choice: dict[str, Any]) -> Outcome:
    """Stage 2 for one choice (non-streaming)."""
    done = preset(choice, turn, p.relevant, ctx.settings.aligner.guards)
    if done is not None:
        return done
    draft = choice["message"]["content"]
    upstream, model = ctx.stage_target(ctx.settings.aligner, turn.model or "")
    body = aligner_body(turn, ctx, model, p.query, draft, p.relevant)
    try:
        result = await upstream.chat(body, request_id=turn.request_id, timeout=ctx.settings.aligner.timeout_seconds, stage="stage2")
    except ProxyError as error:
        return Outcome(draft, "fallback", "fallback", choice.get("finish_reason"), reason=error.code, draft=draft)
    content, finish = first_content(result.data)
    parsed = parse_rewrite(content, ctx.prompts.aligner.headings)
    outcome = judge_rewrite(ctx, p, parsed.text, parsed.unchanged, finish, draft, choice.get("finish_reason"), result.data.get("usage"))
    return await verify_rewrite(turn, ctx, p.query, outcome)


def judge_rewrite(
    ctx: PipelineContext, p: RewritePlan, text: str, unchanged: bool, finish: str | None, draft: str, draft_finish: str | None, usage: Any
) -> Outcome:
    """What a finished rewrite serves: itself when it passes the checks, else the draft."""
    if unchanged:
        return Outcome(draft, "unchanged", "skipped", draft_finish, usage, draft=draft)
    settings = ctx.settings.aligner
    if settings.guards:
        reason = check_rewrite(draft, text, finish, p.query, p.relevant, ctx.prompts.aligner.headings, settings.min_length_ratio)
    elif not usable(text):
        reason = "unusable_reply"
    else:
        reason = "truncated_reply" if finish == "length" else None
    if reason is not None:
        return Outcome(draft, "fallback", "fallback", draft_finish, usage, reason=reason, draft=draft)
    return Outcome(text, "aligned", "true", draft_finish, usage, draft=draft)


def usable(text: str) -> bool:
    """A rewrite worth serving: not empty, and not only a lead-in ("here is the rewrite:")."""
    stripped = text.strip()
    return bool(stripped) and not stripped.endswith(":")


def aligned_header(outcomes: list[Outcome]) -> str:
    present = {outcome.header for outcome in outcomes}
    return next((value for value in HEADER_PRIORITY if value in present), "false")


def record(turn: Turn, ctx: PipelineContext, outcomes: list[Outcome]) -> None:
    if outcomes:
        turn.draft, turn.answer = outcomes[0].draft, outcomes[0].text
        turn.fallback_reason = outcomes[0].reason if outcomes[0].outcome == "fallback" else None
    for outcome in outcomes:
        ctx.metrics.aligner_outcomes.labels("pref_aligner", outcome.outcome).inc()
        if outcome.outcome == "fallback":
            ctx.metrics.aligner_fallbacks.labels(ctx.metrics.fallback_reason(outcome.reason)).inc()
            log.warning("aligner_fallback", request_id=turn.request_id, reason=outcome.reason)
    turn.aligned = aligned_header(outcomes)
    telemetry.annotate(
        outcome=outcomes[0].outcome if outcomes else None, fallback_reason=next((o.reason for o in outcomes if o.reason), None)
    )


def personalization_field(turn: Turn, p: RewritePlan | None, outcomes: list[Outcome]) -> dict[str, Any]:
    """The response's `personalization` object: the drafts only with `return_draft: true`."""
    field: dict[str, Any] = {"strategy": turn.strategy, "aligned": turn.aligned, "usage": usage_parts(p, outcomes)}
    if turn.return_draft:
        field["draft"] = outcomes[0].draft if outcomes else ""
        field["choices"] = [
            {"index": i, "draft": o.draft, "outcome": o.outcome, **({"reason": o.reason} if o.reason else {})}
            for i, o in enumerate(outcomes)
        ]
    return field


def usage_parts(p: RewritePlan | None, outcomes: list[Outcome]) -> dict[str, Any]:
    """Each call's share of `usage`: stage1, gate, stage2 (all choices), verify; null when not made."""
    stage2 = verify = None
    for outcome in outcomes:
        stage2, verify = add_usage(stage2, outcome.usage), add_usage(verify, outcome.verify_usage)
    return {"stage1": p.stage1_usage if p else None, "gate": p.gate_usage if p else None, "stage2": stage2, "verify": verify}


async def serve_pref_aligner(turn: Turn, ctx: PipelineContext) -> Reply:
    """The non-streaming path; streaming lives in `aligner_stream`."""
    p = await plan(turn, ctx)
    choices = p.draft.get("choices") or []
    with turn.waiting():
        if len(choices) == 1:  # the usual case: no task to schedule before stage 2 can go out
            outcomes = [await rewrite_choice(turn, ctx, p, choices[0])]
        else:
            outcomes = list(await asyncio.gather(*(rewrite_choice(turn, ctx, p, choice) for choice in choices)))
    record(turn, ctx, outcomes)
    data = dict(p.draft)
    data["choices"] = [served_choice(choice, outcome) for choice, outcome in zip(choices, outcomes, strict=True)]
    usage = p.usage
    for outcome in outcomes:
        usage = add_usage(add_usage(usage, outcome.usage), outcome.verify_usage)
    if usage is not None:
        data["usage"] = {**(p.draft.get("usage") or {}), **usage}
    data["personalization"] = personalization_field(turn, p, outcomes)
    turn.usage = data.get("usage")
    return Reply(200, response_headers(p.headers), orjson.dumps(data))


def served_choice(choice: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    if outcome.outcome != "aligned":
        return choice
    message = {**choice.get("message", {}), "content": outcome.text}
    return {**choice, "message": message, "logprobs": None}


def response_headers(upstream: CIMultiDict[str]) -> CIMultiDict[str]:
    headers = CIMultiDict(upstream)
    headers["Content-Type"] = "application/json"
    return headers

"""Pref-Aligner for `POST /v1/responses`: stage 1 is the client's request as sent (no
preferences, not streamed), to the upstream's Responses API or through chat completions; stage 2
rewrites the text of its `message` items with the chat pipeline's rewrite, guards and verifier
(`aligner.rewrite_choice`).

Served unchanged: a response with a function call (the turn is mid tool loop, as chat keeps a
choice with tool calls), one asked to be JSON (`text.format`), refusals, reasoning and every
other item. Streaming: `responses_aligner_stream.py`.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Any

import orjson
import structlog
from multidict import CIMultiDict

from ..errors import UpstreamProtocolError
from ..turn import Reply, Turn
from ..upstream.adapt import adapt_chat_body
from ..upstream.client import UpstreamClient
from ..upstream.responses_chat import forces_tool, last_user_text, to_chat, wants_json
from ..upstream.responses_from_chat import from_chat
from .aligner import Outcome, RewritePlan, personalization_field, record, rewrite_choice
from .chat import add_usage
from .context import PipelineContext
from .gate import relevant_preferences

log = structlog.get_logger("perg.aligner")


async def serve_responses_aligner(turn: Turn, ctx: PipelineContext, upstream: UpstreamClient, mode: str) -> Reply:
    """The non-streaming path; streaming lives in `responses_aligner_stream`."""
    response, headers = await aligned_response(turn, ctx, upstream, mode)
    return Reply(200, json_headers(headers), orjson.dumps(response))


async def stage1(turn: Turn, upstream: UpstreamClient, mode: str) -> tuple[dict[str, Any], CIMultiDict[str]]:
    """The client's request answered without preferences, as a response object."""
    body = {key: value for key, value in (turn.body or {}).items() if key not in ("stream", "stream_options")}
    timeout = upstream.settings.timeouts.total
    if mode == "via_chat":
        chat = adapt_chat_body(to_chat(body), upstream.dialect)
        result = await upstream.chat(chat, request_id=turn.request_id, timeout=timeout, stage="stage1")
        return from_chat(result.data, body), result.headers
    result = await upstream.chat(body, request_id=turn.request_id, timeout=timeout, stage="stage1", path="/responses")
    output = result.data.get("output")
    if not isinstance(output, list) or not all(isinstance(item, dict) for item in output):
        raise UpstreamProtocolError("stage 1's response has no list of item objects in 'output'")
    return result.data, result.headers


async def plan(turn: Turn, ctx: PipelineContext, upstream: UpstreamClient, mode: str) -> tuple[RewritePlan, dict[str, Any]]:
    """Stage 1 and, at the same time, the relevance gate (unless the answer is certain to be
    served unchanged)."""
    body = turn.body or {}
    query = last_user_text(body)
    gate = None
    if ctx.settings.relevance_gate.mode == "llm" and not wants_json(body) and not forces_tool(body):
        gate = asyncio.create_task(relevant_preferences(turn, ctx, query))
    try:
        with turn.waiting():
            response, headers = await stage1(turn, upstream, mode)
            relevant, gate_usage = await gate if gate is not None else (turn.preferences, None)
    finally:
        if gate is not None and not gate.done():
            gate.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await gate
    stage1_usage, gate_usage = chat_usage(response.get("usage")), add_usage(None, gate_usage)
    p = RewritePlan({}, headers, query, relevant, add_usage(stage1_usage, gate_usage), stage1_usage, gate_usage)
    return p, response


def chat_usage(usage: Any) -> dict[str, int] | None:
    """A response's `usage` in chat's names, to add the stages' usage up."""
    if not isinstance(usage, dict):
        return None
    names = {"prompt_tokens": "input_tokens", "completion_tokens": "output_tokens", "total_tokens": "total_tokens"}
    return add_usage(None, {chat: usage.get(ours) for chat, ours in names.items()})


def rewritable(response: dict[str, Any], body: dict[str, Any]) -> bool:
    """Whether any message text of the response may be rewritten."""
    output = response.get("output") or []
    return not wants_json(body) and not any(item.get("type") == "function_call" for item in output)


def message_text(item: dict[str, Any]) -> str | None:
    """The text of a message item made of output_text parts only; None for any other item."""
    content = item.get("content")
    if item.get("type") != "message" or not isinstance(content, list) or not content:
        return None
    if not all(isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str) for part in content):
        return None
    return "".join(part["text"] for part in content)


async def rewrite_item(turn: Turn, ctx: PipelineContext, p: RewritePlan, text: str, incomplete: bool, allowed: bool) -> Outcome:
    if not allowed:
        return Outcome(text, "unchanged", "false", draft=text)
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length" if incomplete else "stop"}
    return await rewrite_choice(turn, ctx, p, choice)


async def aligned_response(
    turn: Turn, ctx: PipelineContext, upstream: UpstreamClient, mode: str
) -> tuple[dict[str, Any], CIMultiDict[str]]:
    """The served response: stage 1's, its message texts rewritten where that passed the checks."""
    p, response = await plan(turn, ctx, upstream, mode)
    output = [dict(item) for item in response.get("output") or []]
    texts = {index: text for index, item in enumerate(output) if (text := message_text(item)) is not None}
    allowed, incomplete = rewritable(response, turn.body or {}), response.get("status") == "incomplete"
    with turn.waiting():
        done = await asyncio.gather(*(rewrite_item(turn, ctx, p, text, incomplete, allowed) for text in texts.values()))
    outcomes = list(done)
    record(turn, ctx, outcomes)
    usage = p.usage
    for index, outcome in zip(texts, outcomes, strict=True):
        usage = add_usage(add_usage(usage, outcome.usage), outcome.verify_usage)
        if outcome.outcome == "aligned":
            output[index]["content"] = [{"type": "output_text", "text": outcome.text, "annotations": [], "logprobs": []}]
    served = {**response, "output": output, "personalization": personalization_field(turn, p, outcomes)}
    served["usage"] = served_usage(response.get("usage"), usage)
    turn.usage = usage
    return served, p.headers


def served_usage(given: Any, usage: dict[str, int] | None) -> Any:
    """Stage 1's `usage` (its details kept) with the counts of every call made for the request."""
    if usage is None:
        return given
    return {
        **(given if isinstance(given, dict) else {}),
        "input_tokens": usage.get("prompt_tokens", 0),
        "output_tokens": usage.get("completion_tokens", 0),
        "total_tokens": usage.get("total_tokens", 0),
    }


def json_headers(upstream: CIMultiDict[str]) -> CIMultiDict[str]:
    headers = CIMultiDict(upstream)
    headers["Content-Type"] = "application/json"
    return headers

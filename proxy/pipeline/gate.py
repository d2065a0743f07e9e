"""The relevance gate: which of the user's preferences apply to this query at all.

One short classification call, constrained to a JSON object of booleans `{"p1": true, …}` (one
key per preference: even the 135M local model fills that reliably under a schema). No relevant
preference means the stage-1 answer is served as is and the rewrite call is saved. A gate that
fails or answers something unreadable fails open: every preference counts as relevant (the
aligner itself leaves an answer unchanged when nothing applies), and the failure is counted
(`perg_gate_outcomes_total{outcome="failed_open"}`; the log line says why). A request whose answer
is certain to be served unchanged (JSON asked for, a tool forced) gets no gate call at all.
"""

from __future__ import annotations

from typing import Any

import structlog

from ..errors import ProxyError
from ..prompts.loader import preference_lines
from ..turn import Turn
from ..upstream.structured import extract_json_object, response_format
from .chat import first_content
from .context import PipelineContext

TOKENS_PER_PREFERENCE = 8
log = structlog.get_logger("perg.gate")


def style_key(upstream: str) -> str:
    """The setting that says how an upstream is asked for JSON, for warnings."""
    return f"upstreams[name={upstream}].structured_output"


def gate_schema(count: int) -> dict[str, Any]:
    keys = [f"p{index}" for index in range(1, count + 1)]
    return {"type": "object", "properties": {key: {"type": "boolean"} for key in keys}, "required": keys, "additionalProperties": False}


def gate_body(ctx: PipelineContext, model: str, style: str, query: str, preferences: tuple[str, ...]) -> dict[str, Any]:
    prompt = ctx.prompts.gate
    settings = ctx.settings.relevance_gate
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": prompt.render_user(query=query, preferences=preference_lines(preferences, labels=True))},
        ],
        "temperature": 0,
        "max_tokens": settings.max_tokens or 16 + TOKENS_PER_PREFERENCE * len(preferences),
    }
    constraint = response_format(style, "preference_relevance", gate_schema(len(preferences)))
    if constraint is not None:
        body["response_format"] = constraint
    return body


def read_verdicts(content: str, count: int) -> tuple[bool, ...] | None:
    """One boolean per preference, or None when the reply does not give all of them."""
    data = extract_json_object(content)
    if data is None:
        return None
    verdicts = [data.get(f"p{index}") for index in range(1, count + 1)]
    if not all(isinstance(verdict, bool) for verdict in verdicts):
        return None
    return tuple(verdicts)  # type: ignore[arg-type]


async def relevant_preferences(turn: Turn, ctx: PipelineContext, query: str) -> tuple[tuple[str, ...], Any]:
    """(the preferences that apply, the gate call's usage or None)."""
    preferences = turn.preferences
    upstream, model = ctx.stage_target(ctx.settings.relevance_gate, turn.model or "")
    body = gate_body(ctx, model, upstream.settings.structured_output, query, preferences)
    try:
        result = await upstream.chat(body, request_id=turn.request_id, timeout=ctx.settings.relevance_gate.timeout_seconds, stage="gate")
    except ProxyError as error:
        ctx.metrics.gate_outcomes.labels("failed_open").inc()
        log.warning("gate_failed_open", request_id=turn.request_id, error=error.code, key=style_key(upstream.settings.name))
        return preferences, None
    verdicts = read_verdicts(first_content(result.data)[0], len(preferences))
    if verdicts is None:
        ctx.metrics.gate_outcomes.labels("failed_open").inc()
        log.warning("gate_failed_open", request_id=turn.request_id, error="unparseable")
        return preferences, result.data.get("usage")
    relevant = tuple(text for text, applies in zip(preferences, verdicts, strict=True) if applies)
    ctx.metrics.gate_outcomes.labels("relevant" if relevant else "irrelevant").inc()
    return relevant, result.data.get("usage")

"""The optional verifier (`aligner.verify: llm`): after a rewrite has passed the guards, one call to
the monitor's consistency judge, with its prompt and its structured output, compares the rewrite
with its draft. `contradicts` serves the draft (`fallback`, reason `verifier`); a verifier that
fails or answers something unreadable serves the draft too (reason `verifier_error`): an answer
that could not be checked is not served in place of one that needs no check.

It runs on the aligner's upstream and model. Streams are verified only with
`aligner.verify_streams: buffer` (the whole rewrite is held, verified, then streamed).
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import structlog

from ..errors import CallFailed, ProxyError
from ..perg.judges import Judge
from ..prompts.loader import Prompt, load_prompt
from ..turn import Turn
from ..upstream.structured import extract_json_object
from .chat import add_usage, first_content
from .context import PipelineContext

log = structlog.get_logger("perg.verify")


@functools.cache
def _prompts() -> dict[str, Prompt]:
    return {"consistency": load_prompt("judge_consistency")}


def wants_verify(ctx: PipelineContext, stream: bool) -> bool:
    settings = ctx.settings.aligner
    return settings.verify == "llm" and (not stream or settings.verify_streams == "buffer")


async def verify_rewrite(turn: Turn, ctx: PipelineContext, query: str, outcome: Any, stream: bool = False) -> Any:
    """The outcome to serve: `outcome` itself, or its draft when the verifier does not back it."""
    if outcome.outcome != "aligned" or not wants_verify(ctx, stream):
        return outcome
    upstream, model = ctx.stage_target(ctx.settings.aligner, turn.model or "")
    spent: dict[str, Any] = {"usage": None}

    async def ask(body: dict[str, Any]) -> dict[str, Any]:
        result = await upstream.chat(body, request_id=turn.request_id, timeout=ctx.settings.aligner.timeout_seconds, stage="verify")
        spent["usage"] = add_usage(None, result.data.get("usage"))
        text = first_content(result.data)[0]
        data = extract_json_object(text)
        if data is None:
            raise CallFailed("unparseable", f"no JSON object in the verifier's reply: {text[:120]!r}")
        return data

    judge = Judge(ask, upstream.settings.structured_output, ctx.settings.aligner.verify_max_tokens, _prompts())
    try:
        with turn.waiting():
            verdict = await judge.consistency(model, query, outcome.draft, outcome.text)
    except (CallFailed, ProxyError) as error:
        log.warning("verifier_failed", request_id=turn.request_id, error=str(error))
        return fallback(outcome, "verifier_error", spent["usage"])
    if verdict.verdict == "contradicts":
        return fallback(outcome, "verifier", spent["usage"])
    return replace(outcome, verify_usage=spent["usage"])


def fallback(outcome: Any, reason: str, usage: Any) -> Any:
    return replace(outcome, text=outcome.draft, outcome="fallback", header="fallback", reason=reason, verify_usage=usage)

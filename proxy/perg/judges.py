"""The three judges: relevance (PrefRel), consistency with the reference, and preference
following (the paper's Likert 1–5 rubric, correctness ignored).

Each asks for JSON constrained to a schema (in the judge upstream's structured-output style) and
validates the reply into a model; a reply that does not validate, or a call that fails after its
retries, is a `CallFailed` (a counted judge failure), never a score. How a request reaches the
judge model is the caller's: the monitor and the offline benchmark both use the proxy's own
client (`ask_upstream`, on `UpstreamClient.chat`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import Retries
from ..errors import CallFailed, ProxyError, UpstreamStatusError, UpstreamTimeout, UpstreamUnreachable
from ..pipeline.chat import first_content
from ..prompts.loader import Prompt, load_prompt, preference_lines
from ..upstream.client import UpstreamClient
from ..upstream.structured import extract_json_object, response_format

AskJson = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

REASON = {"type": "string", "maxLength": 120}  # short: a tiny judge model can run on and on


class JudgeVerdict(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    reason: str = Field(default="", max_length=2000)


class RelevanceVerdict(JudgeVerdict):
    relevant: bool


class ConsistencyVerdict(JudgeVerdict):
    verdict: Literal["consistent", "contradicts", "cannot_compare"]


class FollowVerdict(JudgeVerdict):
    score: int = Field(ge=1, le=5)


SCHEMAS: dict[str, dict[str, Any]] = {
    "relevance": {"reason": REASON, "relevant": {"type": "boolean"}},
    "consistency": {"reason": REASON, "verdict": {"type": "string", "enum": ["consistent", "contradicts", "cannot_compare"]}},
    "follow": {"reason": REASON, "score": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
}
MODELS: dict[str, type[JudgeVerdict]] = {"relevance": RelevanceVerdict, "consistency": ConsistencyVerdict, "follow": FollowVerdict}


def schema(name: str) -> dict[str, Any]:
    properties = SCHEMAS[name]
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


@dataclass(frozen=True, slots=True)
class Judge:
    """The judges on one upstream: how to ask it for JSON, its structured-output style, the prompts."""

    ask_json: AskJson
    style: str
    max_tokens: int
    prompts: dict[str, Prompt]

    @classmethod
    def create(
        cls,
        ask_json: AskJson,
        style: str,
        max_tokens: int,
        follow_prompt: str = "judge_follow",
        overrides: Mapping[str, Path | None] | None = None,
    ) -> Judge:
        """The judges with the shipped prompts; `follow_prompt` names another follow rubric
        (`paper_judge_follow`, the paper's protocol) with the same placeholders; `overrides`
        maps a judge name to a file that replaces its prompt (`monitor.judge.prompts`)."""
        files = overrides or {}
        prompts = {name: load_prompt(f"judge_{name}", files.get(name)) for name in SCHEMAS}
        if files.get("follow") is None:
            prompts["follow"] = load_prompt(follow_prompt)
        return cls(ask_json, style, max_tokens, prompts)

    def fingerprint(self, name: str, model: str, follow_threshold: int | None = None) -> str:
        """What makes one judge's verdicts comparable with another's: the judge model, its prompt
        texts, the structured-output style and the token cap (and, for `follow`, the threshold a
        score is read against), hashed to 12 hex digits. Two verdicts with the same fingerprint
        were made the same way; a changed prompt or model is a new fingerprint."""
        return judge_fingerprint(name, model, self.prompts[name].version, self.style, self.max_tokens, follow_threshold)

    async def ask(self, name: str, model: str, **values: str) -> Any:
        prompt = self.prompts[name]
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.render_user(**values)}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        constraint = response_format(self.style, f"perg_{name}_verdict", schema(name))
        if constraint is not None:
            body["response_format"] = constraint
        data = await self.ask_json(body)
        try:
            return MODELS[name].model_validate(data)
        except ValidationError as error:
            raise CallFailed("invalid_verdict", str(error.errors()[0]["msg"])) from error

    async def relevance(self, model: str, query: str, preferences: Sequence[str]) -> RelevanceVerdict:
        return await self.ask("relevance", model, query=query, preferences=preference_lines(list(preferences)))

    async def consistency(self, model: str, query: str, reference: str, answer: str) -> ConsistencyVerdict:
        return await self.ask("consistency", model, query=query, reference=reference, answer=answer)

    async def follow(self, model: str, query: str, preferences: Sequence[str], without: str, with_: str) -> FollowVerdict:
        values = {"query": query, "preferences": preference_lines(list(preferences)), "answer_without": without, "answer_with": with_}
        return await self.ask("follow", model, **values)


def judge_fingerprint(name: str, model: str, prompt_version: str, style: str, max_tokens: int, follow_threshold: int | None) -> str:
    parts = {"judge": name, "model": model, "prompt": prompt_version, "style": style, "max_tokens": max_tokens}
    if name == "follow":
        parts["threshold"] = follow_threshold
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


def sample_fingerprint(judges: Mapping[str, str]) -> str:
    """One fingerprint for a sample's verdicts: over each judge's (name, fingerprint)."""
    return hashlib.sha256(orjson.dumps(dict(sorted(judges.items())))).hexdigest()[:12]


async def ask_upstream(
    upstream: UpstreamClient, body: dict[str, Any], *, timeout: float, retries: Retries, request_id: str
) -> dict[str, Any]:
    """One judge call on the proxy's own client, with `retries` (the one policy of
    `upstream/retries.py`: 429 / 5xx retried with backoff, `retry-after` honoured), then the
    reply's JSON object; failures are `CallFailed`."""
    try:
        result = await upstream.chat(body, request_id=request_id, timeout=timeout, stage="judge", retries=retries)
    except ProxyError as error:
        raise CallFailed(failure_reason(error), error.message) from error
    text = first_content(result.data)[0]
    data = extract_json_object(text)
    if data is None:
        raise CallFailed("unparseable", f"no JSON object in the reply: {text[:120]!r}")
    return data


def failure_reason(error: ProxyError) -> str:
    if isinstance(error, UpstreamStatusError):
        return f"http_{error.status}"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamUnreachable):
        return "unreachable"
    return error.code or "error"

"""The three judges: relevance (PrefRel), consistency with the reference, and preference
following (the paper's Likert 1–5 rubric, correctness ignored).

Each asks for JSON constrained to a schema (in the judge upstream's structured-output style) and
validates the reply into a model; a reply that does not validate, or a call that fails after its
retries, is a `CallFailed` (a counted judge failure), never a score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..pipeline.prompts import Prompt, load_prompt, preference_lines
from ..sdk import CallFailed, complete_json
from ..structured import response_format

REASON = {"type": "string", "maxLength": 120}  # short: a tiny judge model can run on and on


class Verdict(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    reason: str = Field(default="", max_length=2000)


class RelevanceVerdict(Verdict):
    relevant: bool


class ConsistencyVerdict(Verdict):
    verdict: Literal["consistent", "contradicts", "cannot_compare"]


class FollowVerdict(Verdict):
    score: int = Field(ge=1, le=5)


SCHEMAS: dict[str, dict[str, Any]] = {
    "relevance": {"reason": REASON, "relevant": {"type": "boolean"}},
    "consistency": {"reason": REASON, "verdict": {"type": "string", "enum": ["consistent", "contradicts", "cannot_compare"]}},
    "follow": {"reason": REASON, "score": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
}
MODELS: dict[str, type[Verdict]] = {"relevance": RelevanceVerdict, "consistency": ConsistencyVerdict, "follow": FollowVerdict}


def schema(name: str) -> dict[str, Any]:
    properties = SCHEMAS[name]
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


@dataclass(frozen=True, slots=True)
class Judge:
    """The judges on one upstream: its SDK client, structured-output style, and the prompts."""

    sdk: openai.AsyncOpenAI
    style: str
    max_tokens: int
    prompts: dict[str, Prompt]

    @classmethod
    def create(cls, sdk: openai.AsyncOpenAI, style: str, max_tokens: int) -> Judge:
        prompts = {name: load_prompt(f"judge_{name}") for name in SCHEMAS}
        return cls(sdk, style, max_tokens, prompts)

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
        data = await complete_json(self.sdk, body)
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

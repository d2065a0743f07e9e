"""The paper's other strategies, for `eval run` only (never served by the proxy): CoT, ICL and
Self-Critic, and, under `--protocol paper`, the paper's naive prompt and its form of Pref-Aligner.

Each is built from plain calls to the model under test through the proxy's own pipeline (the
`off` strategy: the request goes upstream as built here, on the benchmark's `Upstreams`):
- `cot`: the naive system message plus instructions to think step by step, correct and following
  the preferences (one call);
- `icl`: the naive system message plus few-shot examples for the item's source, from
  `icl_examples.json` or the user's `--icl-examples` file (one call);
- `self_critic`: the naive answer, then one call that critiques it and revises it, replying in
  JSON (`critique`, `response`); a reply that does not parse serves the first answer (two calls);
- `naive` under the paper's protocol: one call whose system message is the paper's template
  (factuality, then the preferences, then "tailor your answer");
- `pref_aligner` under the paper's protocol: stage 1 is the baseline answer itself (as in the
  paper), then one rewrite call that decides relevance on its own and replies in JSON
  (`response`, `reasoning`); a reply that does not parse serves the stage-1 answer; no gate.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..perg.datasets import DatasetError, Item, describe
from ..prompts.loader import preference_lines
from ..upstream.structured import extract_json_object, response_format
from .answering import Answer, Answerer, EvalStrategy
from .cache import fingerprint
from .protocols import Protocol

BUILTIN_EXAMPLES = "icl_examples.json"
REPLY_FIELD = {"type": "string"}
Call = Callable[[dict[str, Any]], Awaitable[str]]


class IclExample(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    question: str = Field(min_length=1)
    options: tuple[str, ...] = Field(min_length=2, max_length=26)
    preference: str = Field(min_length=1)
    response: str = Field(min_length=1)


class IclExamples(BaseModel):
    """Examples by source key; an item takes the first key its source contains, else `default`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    examples: dict[str, tuple[IclExample, ...]]

    def for_source(self, source: str) -> tuple[IclExample, ...]:
        folded = source.casefold()
        key = next((key for key in self.examples if key != "default" and key.casefold() in folded), "default")
        return self.examples.get(key, ())


def load_icl_examples(path: str | Path | None = None) -> IclExamples:
    """The few-shot examples: the built-in set written for this project, or a file in its layout."""
    if path is None:
        name, text = BUILTIN_EXAMPLES, (resources.files("proxy.perg") / "data" / BUILTIN_EXAMPLES).read_text("utf-8")
    else:
        name, text = str(path), Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        return IclExamples(**{key: value for key, value in data.items() if not key.startswith("_")})
    except (ValueError, TypeError, AttributeError) as error:
        message = describe(error) if isinstance(error, ValidationError) else f"not a set of examples: {error}"
        raise DatasetError(name, [(1, message)]) from None


class Baselines:
    """Answers of the prompted strategies for one protocol, on the answerer's upstream."""

    def __init__(self, answerer: Answerer, protocol: Protocol, examples: IclExamples, style: str) -> None:
        self.answerer = answerer
        self.protocol = protocol
        self.examples = examples
        self.style = style

    def inputs(self, item: Item, strategy: EvalStrategy) -> str:
        """A fingerprint of what the strategy's answer depends on beyond the request."""
        shown = [e.model_dump() for e in self.examples.for_source(item.source)] if strategy.name == "icl" else []
        return fingerprint(self.protocol.version(), strategy.name, shown, self.style)

    async def answer(
        self, request_id: str, body: dict[str, Any], item: Item, strategy: EvalStrategy, preferences: tuple[str, ...], baseline: str
    ) -> Answer:
        call = self._caller(request_id)
        if strategy.pipeline == "paper_aligner":
            return await self._paper_aligner(call, body, item, preferences, baseline)
        if strategy.name == "self_critic":
            first = await self._first_answer(request_id, body, item, preferences)
            return await self._critique(call, body, item, preferences, first)
        system = self.naive_system(preferences)
        if strategy.name == "cot":
            system += "\n\n" + self.protocol.prompts["cot"].system
        elif strategy.name == "icl":
            system += "\n\n" + self.protocol.prompts["icl"].render_system(examples=self.render_examples(item))
        return Answer(await call(self._with_system(body, system)))

    def naive_system(self, preferences: Sequence[str]) -> str:
        """The protocol's naive system message: the paper's template, or the proxy's naive note."""
        lines = preference_lines(list(preferences))
        if self.protocol.paper:
            return self.protocol.prompts["naive"].render_system(preferences=lines)
        return self.answerer.prompts.naive.render_system(preferences=lines)

    def render_examples(self, item: Item) -> str:
        blocks = []
        for example in self.examples.for_source(item.source):
            shown = Item(id="example", source=item.source, question=example.question, options=example.options, gold="A")
            blocks.append(f"{self.protocol.question(shown)}\nPreference: {example.preference}\nResponse: {example.response}")
        return "\n\n".join(blocks)

    def _caller(self, request_id: str) -> Call:
        counter = iter(range(1, 100))

        async def call(body: dict[str, Any]) -> str:
            return (await self.answerer.answer(f"{request_id}:{next(counter)}", body, EvalStrategy("call", "off"), ())).text

        return call

    def _with_system(self, body: dict[str, Any], system: str) -> dict[str, Any]:
        """The request with `system` as its system message (the paper's factuality prompt replaced)."""
        messages = [m for m in body["messages"] if m.get("role") != "system"]
        return {**body, "messages": [{"role": "system", "content": system}, *messages]}

    async def _first_answer(self, request_id: str, body: dict[str, Any], item: Item, preferences: tuple[str, ...]) -> str:
        if self.protocol.paper:
            return (await self.answer(request_id + ":naive", body, item, EvalStrategy("naive", "prompted"), preferences, "")).text
        return (await self.answerer.answer(request_id + ":naive", body, EvalStrategy("naive", "naive"), preferences)).text

    async def _critique(self, call: Call, body: dict[str, Any], item: Item, preferences: tuple[str, ...], first: str) -> Answer:
        prompt = self.protocol.prompts["self_critic"]
        user = prompt.render_user(query=self.protocol.question(item), answer=first, preferences=preference_lines(list(preferences)))
        reply = await call(self._json_call(body, prompt.system, user, "perg_self_critique", ("critique", "response")))
        revised = _field(reply, "response")
        return Answer(revised, "true", first) if revised is not None else Answer(first, "fallback", first)

    async def _paper_aligner(self, call: Call, body: dict[str, Any], item: Item, preferences: tuple[str, ...], draft: str) -> Answer:
        prompt = self.protocol.prompts["aligner"]
        user = prompt.render_user(query=self.protocol.question(item), answer=draft, preferences=preference_lines(list(preferences)))
        reply = await call(self._json_call(body, "", user, "perg_paper_alignment", ("response", "reasoning")))
        aligned = _field(reply, "response")
        if aligned is None:
            return Answer(draft, "fallback", draft)
        return Answer(aligned, "skipped" if aligned.strip() == draft.strip() else "true", draft)

    def _json_call(self, body: dict[str, Any], system: str, user: str, name: str, fields: tuple[str, ...]) -> dict[str, Any]:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        request: dict[str, Any] = {**body, "messages": messages, "max_tokens": self.protocol.rewrite_tokens}
        schema = {
            "type": "object",
            "properties": dict.fromkeys(fields, REPLY_FIELD),
            "required": list(fields),
            "additionalProperties": False,
        }
        constraint = response_format(self.style, name, schema)
        if constraint is not None:
            request["response_format"] = constraint
        return request


def _field(reply: str, name: str) -> str | None:
    """A non-empty string field of the JSON object in a reply, else None (the reply did not parse)."""
    data = extract_json_object(reply)
    value = data.get(name) if data is not None else None
    return value if isinstance(value, str) and value.strip() else None

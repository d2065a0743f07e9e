"""A chat-completion request as one upstream accepts it, with the client's OpenAI meaning kept.

Upstreams differ in two fields today's clients send (the openai SDK's `parse()`, LangChain's
`with_structured_output` and `max_tokens`):

* `response_format: {"type": "json_schema", "json_schema": {"schema": ...}}`: an upstream whose
  constrained-JSON form is another (`upstreams[].structured_output`, the same setting the proxy's
  own JSON calls use; replaced by the form the start-up probe found working when the configured one
  is rejected) gets its own form: `json_object_schema` -> `{"type": "json_object", "schema": ...}`
  (llama_cpp.server, which answers `json_schema` with a 500), `json_object` ->
  `{"type": "json_object"}` (JSON, the schema not enforced). `json_schema` and `none` send the
  client's form as it is.
* `max_completion_tokens`: an upstream that honours only `max_tokens`
  (`upstreams[].max_tokens_parameter: max_tokens`; llama_cpp.server ignores the newer name and
  runs to its own limit) gets the bound as `max_tokens` (the smaller one when both are sent).

`adapt_chat_body` is pure and cheap: a request that needs no change costs two dict lookups and is
returned as the very same object (so a pass-through keeps the client's bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import MaxTokensParameter, StructuredOutput


@dataclass(frozen=True, slots=True)
class ChatDialect:
    """What one upstream accepts of a chat request: its constrained-JSON style and the name of
    the output-token bound it honours."""

    json_style: StructuredOutput = "json_schema"
    max_tokens_parameter: MaxTokensParameter = "max_completion_tokens"
    # nothing to adapt: the client's request goes as it is (decided once, read on every request)
    is_openai: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        plain = self.json_style in ("json_schema", "none") and self.max_tokens_parameter == "max_completion_tokens"
        object.__setattr__(self, "is_openai", plain)


OPENAI = ChatDialect()


def adapt_chat_body(body: dict[str, Any], dialect: ChatDialect) -> dict[str, Any]:
    """`body` (a chat-completion request) as the upstream of `dialect` accepts it: `body` itself
    when nothing changes, else a shallow copy with the changed fields (`body` is not modified)."""
    if dialect.is_openai:
        return body
    adapted = body
    if dialect.max_tokens_parameter == "max_tokens" and "max_completion_tokens" in body:
        adapted = dict(body)
        bound = adapted.pop("max_completion_tokens")
        other = adapted.get("max_tokens")
        if isinstance(bound, int) and not isinstance(bound, bool):
            adapted["max_tokens"] = min(bound, other) if isinstance(other, int) and not isinstance(other, bool) else bound
    constraint = body.get("response_format")
    if isinstance(constraint, dict) and constraint.get("type") == "json_schema":
        replaced = json_form(constraint, dialect.json_style)
        if replaced is not constraint:
            adapted = dict(adapted) if adapted is body else adapted
            adapted["response_format"] = replaced
    return adapted


def json_form(constraint: dict[str, Any], style: StructuredOutput) -> dict[str, Any]:
    """A `json_schema` response format in `style`; `constraint` itself where it stays as sent."""
    if style == "json_object_schema":
        spec = constraint.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return {"type": "json_object", "schema": schema} if isinstance(schema, dict) else {"type": "json_object"}
    if style == "json_object":
        return {"type": "json_object"}
    return constraint

"""OpenAI wire models: lenient (unknown fields kept), strict on the types of known ones.

These models only *check* a request. What travels upstream is the client's own JSON object (or its
very bytes), so a field the proxy does not know, or a number format, is never altered.

A chat body is bounded before it costs much (`server.max_*`, 400 naming the field): the entries
of `messages`, `tools` and `logit_bias`, the nesting depth of every value, and (for a body that
looks heavy) the count of JSON values; only then the pydantic models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from ..errors import InvalidRequest

Number = StrictFloat | StrictInt


def _integral(value: Any) -> Any:
    """JSON has one number type: 2.0 is the integer 2 (as JSON Schema says); "2" and true are not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Integer = Annotated[StrictInt, BeforeValidator(_integral)]


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Message(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[dict[str, Any]] | None = None
    name: StrictStr | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: StrictStr | None = None


class ChatCompletionRequest(Lenient):
    model: StrictStr = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: StrictBool | None = None
    stream_options: dict[str, Any] | None = None
    n: Integer | None = Field(None, ge=1, le=128)  # OpenAI's own limit; bounds the aligner's fan-out
    temperature: Number | None = None
    top_p: Number | None = None
    max_tokens: Integer | None = None
    max_completion_tokens: Integer | None = None
    stop: StrictStr | list[StrictStr] | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    logit_bias: dict[str, Number] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Integer | None = None
    seed: Integer | None = None
    user: StrictStr | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: dict[str, Any] | None = None


class ResponsesRequest(Lenient):
    """`POST /v1/responses`: the fields the proxy reads or translates (`upstream/responses_chat.py`)."""

    model: StrictStr = Field(min_length=1)
    input: StrictStr | list[dict[str, Any]] | None = None
    instructions: StrictStr | None = None
    stream: StrictBool | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    max_output_tokens: Integer | None = None
    user: StrictStr | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    text: dict[str, Any] | None = None
    store: StrictBool | None = None
    background: StrictBool | None = None
    previous_response_id: StrictStr | None = None
    metadata: dict[str, Any] | None = None


INPUT_ROLES = ("user", "assistant", "system", "developer")


def check_responses_request(data: dict[str, Any]) -> ResponsesRequest:
    try:
        request = ResponsesRequest.model_validate(data)
    except ValidationError as error:
        raise validation_error(error) from None
    for index, item in enumerate(request.input if isinstance(request.input, list) else []):
        param = f"input[{index}]"
        if item.get("type", "message") != "message":
            continue
        if item.get("role") not in INPUT_ROLES:
            raise InvalidRequest(
                f"Invalid value for '{param}.role': one of {', '.join(INPUT_ROLES)} is expected.",
                param=f"{param}.role",
                code="invalid_value",
            )
        content = item.get("content")
        if not isinstance(content, str | list):
            raise InvalidRequest(
                f"Invalid type for '{param}.content': a string or a list of parts is expected.",
                param=f"{param}.content",
                code="invalid_type",
            )
        if isinstance(content, list):
            check_parts(content, f"{param}.content")
    return request


def parse_json_object(payload: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong with it."""
    if not payload:
        raise InvalidRequest("The request body is empty; a JSON object was expected.", code="invalid_json")
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"The request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return data


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict"})


def param_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's location as OpenAI names a parameter: `messages[0].content`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS or "[" in part or "-" in part:
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_error(error: ValidationError) -> InvalidRequest:
    first = error.errors()[0]
    param = param_path(first["loc"])
    kind = first["type"]
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if kind == "literal_error":
        return InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param=param, code="invalid_value")
    if kind.endswith("_type") or kind in ("union_tag_invalid", "model_type", "dict_type", "list_type"):
        return InvalidRequest(f"Invalid type for '{param}': {first['msg']}.", param=param, code="invalid_type")
    return InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param=param, code="invalid_value")


@dataclass(frozen=True, slots=True)
class BodyLimits:
    values: int
    messages: int
    tools: int
    logit_bias: int
    depth: int


def parse_chat_body(payload: bytes, limits: BodyLimits, kind: str = "chat") -> dict[str, Any]:
    """The chat (or Responses, `kind`) request body as a JSON object within the entry and depth
    limits, or a 400 naming the field past them. A Responses body's `input` counts as messages."""
    data = parse_json_object(payload)
    entries = "input" if kind == "responses" else "messages"
    for name, most in ((entries, limits.messages), ("tools", limits.tools), ("logit_bias", limits.logit_bias)):
        value = data.get(name)
        if isinstance(value, list | dict) and len(value) > most:
            raise InvalidRequest(f"'{name}' has {len(value)} entries; at most {most} are allowed.", param=name, code="too_many_entries")
    if payload.count(b"{") + payload.count(b"[") > limits.depth:  # fewer containers than that cannot nest deeper
        check_depth(data, limits.depth)
    return data


def check_depth(data: dict[str, Any], limit: int) -> None:
    """Every value nested at most `limit` deep (the body itself is depth 1)."""
    for name, value in data.items():
        stack = [(value, 2)] if isinstance(value, dict | list) else []
        while stack:
            item, depth = stack.pop()
            if depth > limit:
                raise InvalidRequest(f"'{name}' is nested more than {limit} levels deep.", param=name, code="too_deep")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def count_values(data: dict[str, Any], limit: int) -> None:
    """At most `limit` JSON values in the body (objects, arrays, strings, numbers...)."""
    seen = 0
    stack: list[Any] = [data]
    while stack:
        item = stack.pop()
        children = list(item.values()) if isinstance(item, dict) else item
        seen += len(children)
        if seen > limit:
            raise InvalidRequest(f"The request body has more than {limit} JSON values.", code="request_too_complex")
        stack.extend(child for child in children if isinstance(child, dict | list))


def inspect_chat_body(payload: bytes, limits: BodyLimits, kind: str = "chat") -> tuple[str, str | None, str | None] | None:
    """Every check of a chat (or Responses) body, in a worker process (`server/heavy_bodies.py`):
    None when it passes, else the 400's (message, param, code)."""
    try:
        data = parse_chat_body(payload, limits, kind)
        count_values(data, limits.values)
        (check_responses_request if kind == "responses" else check_chat_request)(data)
    except InvalidRequest as error:
        return error.message, error.param, error.code
    return None


def check_chat_request(data: dict[str, Any]) -> ChatCompletionRequest:
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as error:
        raise validation_error(error) from None
    for index, message in enumerate(request.messages):
        if isinstance(message.content, list):
            check_parts(message.content, f"messages[{index}].content")
    return request


def check_parts(parts: list[dict[str, Any]], param: str) -> None:
    """Every part an object, a text part's `text` a string (the pipeline joins them)."""
    for index, part in enumerate(parts):
        if not isinstance(part, dict):
            raise InvalidRequest(
                f"Invalid type for '{param}[{index}]': an object is expected.", param=f"{param}[{index}]", code="invalid_type"
            )
        if part.get("type") in ("text", "input_text", "output_text") and not isinstance(part.get("text"), str):
            raise InvalidRequest(
                f"Invalid type for '{param}[{index}].text': a string is expected.", param=f"{param}[{index}].text", code="invalid_type"
            )

"""Asking an upstream for JSON, and reading JSON out of what a model actually sent back.

Upstreams differ in how they constrain a reply to a schema, so the style is a per-upstream
setting: OpenAI's `json_schema`, llama_cpp.server's `json_object` with a `schema` (it rejects
`json_schema`), plain `json_object`, or nothing (then the prompt alone asks for JSON).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import orjson

FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def response_format(style: str, name: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The `response_format` request field for `style`, or None when nothing should be sent."""
    if style == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    if style == "json_object_schema":
        return {"type": "json_object", "schema": schema}
    if style == "json_object":
        return {"type": "json_object"}
    return None


def extract_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text`: bare, inside a code fence, or inside prose; else None.
    Tried in that order, each only if the one before it fails (a bare object, the usual reply of a
    constrained call, costs one parse)."""
    for candidate in _candidates(text):
        value = _loads(candidate) if candidate else None
        if isinstance(value, dict):
            return value
    return None


def _candidates(text: str) -> Iterator[str]:
    yield text.strip()
    for match in FENCE.findall(text):
        yield match.strip()
    start = text.find("{")
    if start >= 0:
        yield _balanced(text, start)


def _loads(text: str) -> Any:
    """JSON, also with raw line breaks or tabs inside strings (small models write them)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(text, strict=False)
    except ValueError:
        return None


def _balanced(text: str, start: int) -> str:
    """The text from `start` to its matching closing brace (string-aware), or to the end."""
    depth, in_string, escaped = 0, False, False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start : index + 1]
    return text[start:]

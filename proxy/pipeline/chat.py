"""Chat-completion objects as the pipeline reads and builds them (plain dicts, wire format)."""

from __future__ import annotations

from typing import Any

USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def last_user_query(messages: list[dict[str, Any]]) -> str:
    """The text of the last user message (text parts of a multi-part message joined)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return ""


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")
    return ""


def wants_json(body: dict[str, Any]) -> bool:
    response_format = body.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema")


def forces_tool(body: dict[str, Any]) -> bool:
    """`tool_choice` makes the model call a tool: `required`, or one named function."""
    choice = body.get("tool_choice")
    return bool(body.get("tools")) and (choice == "required" or (isinstance(choice, dict) and choice.get("type") == "function"))


def served_unchanged(body: dict[str, Any] | None) -> bool:
    """The request's answer is certain to be served unchanged (JSON asked for, a tool forced): no
    relevance gate is needed for it."""
    return body is not None and (wants_json(body) or forces_tool(body))


def keep_as_is(choice: dict[str, Any], body: dict[str, Any]) -> bool:
    """Choices served unchanged whatever the preferences: tool calls, refusals, JSON, empty."""
    message = choice.get("message") or {}
    content = message.get("content")
    return bool(
        message.get("tool_calls")
        or message.get("function_call")
        or message.get("refusal")
        or wants_json(body)
        or not isinstance(content, str)
        or not content.strip()
    )


def add_usage(total: dict[str, int] | None, usage: Any) -> dict[str, int] | None:
    """Sum of two `usage` objects (the counted keys only); None when neither has one."""
    if not isinstance(usage, dict):
        return total
    out = dict(total or {key: 0 for key in USAGE_KEYS})
    for key in USAGE_KEYS:
        value = usage.get(key)
        if isinstance(value, int):
            out[key] = out.get(key, 0) + value
    return out


def first_content(data: dict[str, Any]) -> tuple[str, str | None]:
    """(content, finish_reason) of the first choice of a completion."""
    choices = data.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content = message.get("content")
    return (content if isinstance(content, str) else ""), choice.get("finish_reason")


def chunk(template: dict[str, Any], choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A `chat.completion.chunk` carrying the stream's one id, model and creation time."""
    return {**template, "object": "chat.completion.chunk", "choices": choices, **extra}


def stream_template(completion: dict[str, Any]) -> dict[str, Any]:
    template: dict[str, Any] = {key: completion[key] for key in ("id", "created", "model", "system_fingerprint") if key in completion}
    template.setdefault("id", "chatcmpl-perg")
    return template


def delta_choice(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

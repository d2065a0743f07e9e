"""The Responses API over chat completions (`upstreams[].responses_api: via_chat`), statelessly:
the request half (the answer's half is `responses_from_chat.py`).

`to_chat` turns a Responses request into a chat completion request: `input` (a string, or
message, `function_call` and `function_call_output` items) and `instructions` become messages,
function tools are flattened to chat's shape, `text.format` becomes `response_format`,
`max_output_tokens` `max_completion_tokens`. What only stored state could answer
(`previous_response_id`, `conversation`, `background`, `prompt`, `item_reference` items) and
what chat cannot express (hosted tools) is a 400 naming the field, never dropped. `store` is
accepted and nothing is stored. Fields this module does not know travel on untouched.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequest

STATEFUL = {
    "previous_response_id": "it names a stored response",
    "conversation": "it names a stored conversation",
    "prompt": "it names a stored prompt template",
}
# Request fields that only shape the stored response object or the proxy's own reply.
NOT_FORWARDED = frozenset(
    {"input", "instructions", "tools", "tool_choice", "text", "max_output_tokens", "reasoning", "store", "metadata", "include",
     "truncation", "stream_options", "background", "top_logprobs", "max_tool_calls", "personalization"}
)  # fmt: skip


def obj(value: Any) -> dict[str, Any]:
    """`value` when it is a JSON object, else an empty one (a field of the wrong type reads as absent)."""
    return value if isinstance(value, dict) else {}


def listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def unsupported(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"'{param}' is not supported by this upstream, which serves the Responses API through chat completions "
        f"(responses_api: via_chat) and keeps no state: {why}.",
        param=param,
        code="unsupported_parameter",
    )


def check_stateless(body: dict[str, Any]) -> None:
    """A 400 naming the first field that needs stored state."""
    for key, why in STATEFUL.items():
        if body.get(key) is not None:
            raise unsupported(key, why)
    if body.get("background") is True:
        raise unsupported("background", "a background response is fetched later from storage")


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completion request for a Responses request (a 400 for what cannot be expressed)."""
    check_stateless(body)
    chat: dict[str, Any] = {key: value for key, value in body.items() if key not in NOT_FORWARDED}
    chat["messages"] = messages_of(body)
    if body.get("tools"):
        chat["tools"] = [chat_tool(obj(tool), index) for index, tool in enumerate(body["tools"])]
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = chat_tool_choice(body["tool_choice"])
    response_format = chat_response_format(obj(body.get("text")).get("format"))
    if response_format is not None:
        chat["response_format"] = response_format
    if isinstance(obj(body.get("text")).get("verbosity"), str):
        chat["verbosity"] = body["text"]["verbosity"]
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    if isinstance(obj(body.get("reasoning")).get("effort"), str):
        chat["reasoning_effort"] = body["reasoning"]["effort"]
    if body.get("top_logprobs"):
        chat["logprobs"], chat["top_logprobs"] = True, body["top_logprobs"]
    if body.get("stream") is True:
        chat["stream_options"] = {"include_usage": True}
    return chat


def messages_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """`instructions` as the system message, then `input` as chat messages."""
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str) and body["instructions"]:
        messages.append({"role": "system", "content": body["instructions"]})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
        return messages
    for index, item in enumerate(given if isinstance(given, list) else []):
        add_item(messages, obj(item), f"input[{index}]")
    return messages


def add_item(messages: list[dict[str, Any]], item: dict[str, Any], param: str) -> None:
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        content = chat_content(item.get("content"), param, assistant=role == "assistant")
        messages.append({"role": role, "content": content})
    elif kind == "function_call":
        call = {
            "id": item.get("call_id"),
            "type": "function",
            "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
        }
        last = messages[-1] if messages else None
        if last is not None and last.get("role") == "assistant" and "tool_call_id" not in last:
            last.setdefault("tool_calls", []).append(call)  # one assistant turn: its text and its calls
        else:  # content "" rather than null: some servers (llama_cpp) reject null content
            messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        content = output if isinstance(output, str) else chat_content(output, f"{param}.output", assistant=False)
        messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": content})
    elif kind == "reasoning":
        return  # the model's own reasoning, replayed: chat completions have no place for it
    elif kind == "item_reference":
        raise unsupported(f"{param}.type", "an item_reference names a stored item")
    else:
        raise unsupported(f"{param}.type", f"chat completions have no '{kind}' items")


def chat_content(content: Any, param: str, *, assistant: bool) -> Any:
    """A message's content as chat takes it: text parts joined into a string, other parts mapped."""
    if isinstance(content, str) or content is None:
        return content or ""
    if assistant:
        parts = content if isinstance(content, list) else []
        return "".join(str(part.get("text") or part.get("refusal") or "") for part in parts if isinstance(part, dict))
    if not isinstance(content, list):
        raise InvalidRequest(
            f"Invalid type for '{param}.content': a string or a list of parts is expected.", param=f"{param}.content", code="invalid_type"
        )
    parts = [chat_part(obj(part), f"{param}.content[{index}]") for index, part in enumerate(content)]
    if all(part["type"] == "text" for part in parts):  # text only: one string, which every chat template takes
        return "\n".join(part["text"] for part in parts)  # (llama_cpp's SmolLM2 template answers a list with a 500)
    return parts


def chat_part(part: dict[str, Any], param: str) -> dict[str, Any]:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": part.get("text", "")}
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        image = {"url": part["image_url"], **({"detail": part["detail"]} if part.get("detail") else {})}
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        fields = {key: part[key] for key in ("file_data", "file_id", "filename") if key in part}
        return {"type": "file", "file": fields}
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": part.get("input_audio") or {}}
    raise unsupported(f"{param}.type", f"a '{kind}' part cannot be expressed in a chat message")


def chat_tool(tool: dict[str, Any], index: int) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise unsupported(f"tools[{index}].type", f"'{tool.get('type')}' is a hosted tool; only function tools exist in chat completions")
    function = {key: tool[key] for key in ("name", "description", "parameters", "strict") if tool.get(key) is not None}
    return {"type": "function", "function": function}


def chat_tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise unsupported("tool_choice", "only 'auto', 'none', 'required' or a function can be chosen in chat completions")


def chat_response_format(format_: Any) -> dict[str, Any] | None:
    if not isinstance(format_, dict) or format_.get("type") in (None, "text"):
        return None
    if format_.get("type") == "json_schema":
        spec = {key: format_[key] for key in ("name", "schema", "strict", "description") if key in format_}
        return {"type": "json_schema", "json_schema": spec}
    return {"type": format_["type"]}


def wants_json(body: dict[str, Any]) -> bool:
    """The request asks for JSON (`text.format` json_schema / json_object)."""
    format_ = obj(body.get("text")).get("format")
    return isinstance(format_, dict) and format_.get("type") in ("json_object", "json_schema")


def forces_tool(body: dict[str, Any]) -> bool:
    """`tool_choice` makes the model call a tool: `required`, or one named function."""
    choice = body.get("tool_choice")
    return bool(body.get("tools")) and (choice == "required" or (isinstance(choice, dict) and choice.get("type") == "function"))


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the request's last user message (no stored state needed)."""
    given = body.get("input")
    if isinstance(given, str):
        return given
    for item in reversed(given if isinstance(given, list) else []):
        if isinstance(item, dict) and item.get("type", "message") == "message" and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            parts = content if isinstance(content, list) else []
            return "\n".join(str(p.get("text", "")) for p in parts if isinstance(p, dict) and p.get("type") in ("input_text", "text"))
    return ""

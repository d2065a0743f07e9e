"""The Responses API over chat completions, the answer's half: `from_chat` turns a chat
completion into a response object, `ChatStreamTranslator` streamed chunks into Responses events
(`responses_events.py`); `served_text` reads the answer text of what was served, for the monitor.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from .events import EventParser
from .responses_chat import listed, obj
from .responses_events import ResponseEvents


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def response_shell(body: dict[str, Any], model: str | None, response_id: str | None = None) -> dict[str, Any]:
    """A response object with the request's settings echoed, as OpenAI's are, and no output yet."""
    return {
        "id": response_id or new_id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model or body.get("model"),
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "store": False,  # nothing is stored: nothing is retrievable later
        "temperature": body.get("temperature"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p"),
        "truncation": body.get("truncation", "disabled"),
        "usage": None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def responses_usage(usage: Any) -> dict[str, Any] | None:
    """Chat's `usage` in the Responses API's names."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    cached = obj(usage.get("prompt_tokens_details")).get("cached_tokens") or 0
    reasoning = obj(usage.get("completion_tokens_details")).get("reasoning_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": usage.get("total_tokens") or prompt + completion,
    }


INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def from_chat(completion: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The response object for a chat completion (its first choice)."""
    response = response_shell(body, completion.get("model"), "resp_" + str(completion.get("id") or secrets.token_hex(12)))
    choices = completion.get("choices") or [{}]
    choice = obj(choices[0]) if isinstance(choices, list) and choices else {}
    message = obj(choice.get("message"))
    output: list[dict[str, Any]] = []
    content, refusal = message.get("content"), message.get("refusal")
    if (isinstance(content, str) and content) or refusal:
        parts: list[dict[str, Any]] = []
        if isinstance(content, str) and content:
            parts.append({"type": "output_text", "text": content, "annotations": [], "logprobs": []})
        if refusal:
            parts.append({"type": "refusal", "refusal": refusal})
        output.append({"id": new_id("msg"), "type": "message", "status": "completed", "role": "assistant", "content": parts})
    for call in listed(message.get("tool_calls")):
        call, function = obj(call), obj(obj(call).get("function"))
        call_id = str(call.get("id") or new_id("call"))
        output.append(
            {"id": "fc_" + call_id, "type": "function_call", "status": "completed", "call_id": call_id,
             "name": function.get("name"), "arguments": function.get("arguments") or ""}
        )  # fmt: skip
    response["output"] = output
    reason = INCOMPLETE.get(choice.get("finish_reason") or "")
    response["status"] = "incomplete" if reason else "completed"
    response["incomplete_details"] = {"reason": reason} if reason else None
    response["usage"] = responses_usage(completion.get("usage"))
    return response


class ChatStreamTranslator:
    """Chat completion chunks in, Responses events out (choice 0; usage from the last chunk)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body
        self.events: ResponseEvents | None = None
        self._message_id = new_id("msg")
        self._calls: dict[int, int] = {}  # chat tool-call index -> output index
        self._finish: str | None = None
        self._usage: Any = None

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out = b""
        if self.events is None:
            self.events = ResponseEvents(response_shell(self._body, chunk.get("model"), "resp_" + str(chunk.get("id") or new_id("chat"))))
            out += self.events.start()
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in listed(chunk.get("choices")):
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                out += self._choice(choice)
        return out

    def _choice(self, choice: dict[str, Any]) -> bytes:
        assert self.events is not None
        delta = obj(choice.get("delta"))
        self._finish = choice.get("finish_reason") or self._finish
        out = b""
        if isinstance(delta.get("content"), str) and delta["content"]:
            out += self.events.text(delta["content"], self._message_id)
        if isinstance(delta.get("refusal"), str) and delta["refusal"]:
            out += self.events.refusal(delta["refusal"], self._message_id)
        for call in listed(delta.get("tool_calls")):
            out += self._call(obj(call))
        return out

    def _call(self, call: dict[str, Any]) -> bytes:
        assert self.events is not None
        function = obj(call.get("function"))
        position = call.get("index", 0) if isinstance(call.get("index", 0), int) else 0
        out = b""
        if position not in self._calls:
            call_id = str(call.get("id") or new_id("call"))
            self._calls[position], out = self.events.open_call("fc_" + call_id, call_id, str(function.get("name") or ""))
        return out + self.events.arguments(self._calls[position], str(function.get("arguments") or ""))

    def finish(self) -> bytes:
        """The end of the chat stream: every item closed, then the terminal event."""
        if self.events is None:
            self.events = ResponseEvents(response_shell(self._body, None))
            out = self.events.start()
        else:
            out = b""
        return out + self.events.finish(responses_usage(self._usage), INCOMPLETE.get(self._finish or ""))


def output_text(response: Any) -> str:
    """The text of a response's message items (what the SDKs call `output_text`)."""
    parts: list[str] = []
    for item in (response.get("output") if isinstance(response, dict) else None) or []:
        if isinstance(item, dict) and item.get("type") == "message":
            parts.extend(
                str(p.get("text") or "") for p in item.get("content") or [] if isinstance(p, dict) and p.get("type") == "output_text"
            )
    return "".join(parts)


def served_text(body: bytes | None, captured: bytearray | None) -> str | None:
    """The answer text of a served response: its JSON body, else its captured event stream (the
    terminal event's response, else the text deltas)."""
    if body is not None:
        try:
            return output_text(orjson.loads(body))
        except orjson.JSONDecodeError:
            return None
    if captured is None:
        return None
    deltas = []
    for event in EventParser().feed(bytes(captured)):
        try:
            data = orjson.loads(event.data) if event.data else None
        except orjson.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        if data.get("type") in ("response.completed", "response.incomplete"):
            return output_text(data.get("response"))
        if data.get("type") == "response.output_text.delta":
            deltas.append(str(data.get("delta") or ""))
    return "".join(deltas)

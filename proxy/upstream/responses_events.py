"""Responses API event streams, written: `ResponseEvents` builds the events of one response as
its output arrives (`response.created` … `response.completed`, numbered by `sequence_number`),
keeping the response object they describe, so the final event always matches what was streamed.

`replay(response)` gives the whole stream of a finished response object (Pref-Aligner serves a
rewritten answer this way); `translate` in `responses_chat.py` drives the same builder from chat
completion chunks.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ..errors import ProxyError, error_payload
from .events import ServerEvent

TERMINAL_EVENTS = frozenset({b"response.completed", b"response.failed", b"response.incomplete", b"error"})


def is_terminal(event: ServerEvent) -> bool:
    """The event that ends a response's stream, by its SSE name (OpenAI names every event), else
    by the `type` of its data (servers that send `data:` lines only)."""
    if event.name != b"message":
        return event.name in TERMINAL_EVENTS
    if event.data is None or b'"type"' not in event.data:
        return False
    try:
        data = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and isinstance(data.get("type"), str) and data["type"].encode() in TERMINAL_EVENTS


def event_bytes(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def error_fields(error: BaseException) -> dict[str, Any]:
    """`code` and `message` of an error as a client may see them (never a traceback)."""
    _, body, _ = error_payload(error)
    inner = body.get("error") or {}
    return {"code": inner.get("code") or inner.get("type") or "server_error", "message": inner.get("message") or "error"}


def error_event(error: BaseException, sequence_number: int) -> bytes:
    """The stream's `error` event, for a failure before any `response.created` was sent."""
    fields = error_fields(error)
    param = error.param if isinstance(error, ProxyError) else None
    return event_bytes("error", {"type": "error", **fields, "param": param, "sequence_number": sequence_number})


class ResponseEvents:
    """The events of one response. Items are opened, fed and closed in order; at most one message
    item is open at a time (function calls may stay open until the end)."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = {**response, "status": "in_progress", "output": []}
        self.sequence = 0
        self._message: int | None = None  # output index of the open message item
        self._open: list[int] = []  # output indexes of items not yet done, in order

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event_bytes(kind, payload)

    def _snapshot(self) -> dict[str, Any]:
        return {**self.response, "output": [dict(item) for item in self.response["output"]]}

    def start(self) -> bytes:
        return self._event("response.created", response=self._snapshot()) + self._event("response.in_progress", response=self._snapshot())

    def _add(self, item: dict[str, Any]) -> tuple[int, bytes]:
        index = len(self.response["output"])
        self.response["output"].append(item)
        self._open.append(index)
        return index, self._event(
            "response.output_item.added", output_index=index, item=dict(item, content=[]) if "content" in item else dict(item)
        )

    def text(self, delta: str, item_id: str) -> bytes:
        """Text of the open message item (opened here when none is)."""
        out = b""
        if self._message is None:
            opened: dict[str, Any] = {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
            self._message, out = self._add(opened)
            opened["content"].append({"type": "output_text", "text": "", "annotations": [], "logprobs": []})
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out += self._event("response.content_part.added", item_id=item_id, output_index=self._message, content_index=0, part=part)
        item = self.response["output"][self._message]
        part = item["content"][-1]
        part["text"] += delta
        if not delta:
            return out
        fields = {"item_id": item["id"], "output_index": self._message, "content_index": len(item["content"]) - 1}
        return out + self._event("response.output_text.delta", **fields, delta=delta, logprobs=[])

    def refusal(self, text: str, item_id: str) -> bytes:
        """A refusal part on the open message item (opened here when none is)."""
        out = b""
        if self._message is None:
            self._message, out = self._add({"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []})
        item = self.response["output"][self._message]
        item["content"].append({"type": "refusal", "refusal": text})
        fields = {"item_id": item["id"], "output_index": self._message, "content_index": len(item["content"]) - 1}
        out += self._event("response.content_part.added", **fields, part={"type": "refusal", "refusal": ""})
        out += self._event("response.refusal.delta", **fields, delta=text)
        out += self._event("response.refusal.done", **fields, refusal=text)
        return out + self._event("response.content_part.done", **fields, part={"type": "refusal", "refusal": text})

    def close_message(self) -> bytes:
        if self._message is None:
            return b""
        index, self._message = self._message, None
        return self._close(index)

    def open_call(self, item_id: str, call_id: str, name: str) -> tuple[int, bytes]:
        out = self.close_message()
        item = {"id": item_id, "type": "function_call", "status": "in_progress", "call_id": call_id, "name": name, "arguments": ""}
        index, added = self._add(item)
        return index, out + added

    def arguments(self, index: int, delta: str) -> bytes:
        item = self.response["output"][index]
        item["arguments"] += delta
        if not delta:
            return b""
        return self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=delta)

    def item(self, item: dict[str, Any]) -> bytes:
        """An item of another kind (reasoning, a hosted tool's call …), added and done at once."""
        out = self.close_message()
        index, added = self._add(dict(item))
        return out + added + self._close(index)

    def _close(self, index: int) -> bytes:
        if index not in self._open:
            return b""
        self._open.remove(index)
        item = self.response["output"][index]
        out = b""
        if item.get("type") == "message":
            for position, part in enumerate(item["content"]):
                if part.get("type") != "output_text":
                    continue
                fields = {"item_id": item["id"], "output_index": index, "content_index": position}
                out += self._event("response.output_text.done", **fields, text=part["text"], logprobs=part.get("logprobs") or [])
                out += self._event("response.content_part.done", **fields, part=dict(part))
        elif item.get("type") == "function_call":
            out += self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=item["arguments"],
            )
        if item.get("status") == "in_progress":
            item["status"] = "completed"
        return out + self._event("response.output_item.done", output_index=index, item=dict(item))

    def finish(self, usage: dict[str, Any] | None, incomplete: str | None = None, extra: dict[str, Any] | None = None) -> bytes:
        """Close what is open, then `response.completed` (or `response.incomplete`)."""
        out = self.close_message()
        for index in list(self._open):
            out += self._close(index)
        self.response["usage"] = usage
        self.response.update(extra or {})
        if incomplete is not None:
            self.response["status"] = "incomplete"
            self.response["incomplete_details"] = {"reason": incomplete}
            return out + self._event("response.incomplete", response=self._snapshot())
        self.response["status"] = "completed"
        return out + self._event("response.completed", response=self._snapshot())

    def fail(self, error: BaseException) -> bytes:
        """`response.failed`: the stream ends in error, never as a clean completion."""
        self.response["status"] = "failed"
        self.response["error"] = error_fields(error)
        return self._event("response.failed", response=self._snapshot())


def replay(response: dict[str, Any]) -> list[bytes]:
    """The event stream of a finished response object, the object itself last (`completed`)."""
    events = ResponseEvents({**response, "created_at": response.get("created_at") or int(time.time())})
    out = [events.start()]
    for item in response.get("output") or []:
        out.append(replay_item(events, item))  # stage 1's items, checked to be objects
    details = response.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) and response.get("status") == "incomplete" else None
    extra = {key: response[key] for key in ("personalization",) if key in response}
    out.append(events.finish(response.get("usage"), reason, extra))
    return out


def replay_item(events: ResponseEvents, item: dict[str, Any]) -> bytes:
    kind = item.get("type")
    if kind == "message" and isinstance(item.get("content"), list):
        out = events.close_message()
        item_id = str(item.get("id") or "msg_perg")
        for part in item["content"]:
            if isinstance(part, dict) and part.get("type") == "output_text":
                out += _text_part(events, part, item_id)
            elif isinstance(part, dict) and part.get("type") == "refusal":
                out += events.refusal(str(part.get("refusal") or ""), item_id)
        return out + events.close_message()
    if kind == "function_call":
        index, out = events.open_call(str(item.get("id") or ""), str(item.get("call_id") or ""), str(item.get("name") or ""))
        out += events.arguments(index, str(item.get("arguments") or ""))
        return out + events._close(index)
    return events.item(item)


def _text_part(events: ResponseEvents, part: dict[str, Any], item_id: str) -> bytes:
    """One output_text part: a new part on the open message (its own content index)."""
    text = str(part.get("text") or "")
    if events._message is not None:  # a second text part of the same message
        item = events.response["output"][events._message]
        new = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        item["content"].append(new)
        fields = {"item_id": item["id"], "output_index": events._message, "content_index": len(item["content"]) - 1}
        return events._event("response.content_part.added", **fields, part=dict(new)) + events.text(text, item_id)
    return events.text(text, item_id)

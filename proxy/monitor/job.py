"""`Job`: what the monitor keeps of a sampled request once its answer has been served.

Only what the judges read: the query, preferences, answer and reference always; the request body
only when the monitor must call the model with it (a reference answer when there is no stage-1
draft, or a shadow answer). `size` is what the job holds, in bytes, for the queue's byte bound."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .. import telemetry
from ..pipeline.chat import first_content, last_user_query
from ..turn import Reply, StreamReply, Turn


@dataclass(frozen=True, slots=True)
class Job:
    request_id: str
    user_id: str | None
    model: str
    strategy: str
    body: dict[str, Any]
    query: str
    preferences: tuple[str, ...]
    answer: str | None
    reference: str | None
    judge_served: bool
    shadow: bool
    size: int = 0
    traceparent: str | None = None  # the request span's, when traced: judging joins its trace


def job_of(turn: Turn, reply: Reply | StreamReply, chat_body: dict[str, Any] | None = None) -> Job:
    """The job for a served turn: the answer served (choice 0) and, for Pref-Aligner, its draft.
    `chat_body`: the chat request the turn amounts to, when it is not one (a Responses request)."""
    assert turn.body is not None
    request = chat_body if chat_body is not None else turn.body
    answer = turn.answer
    if answer is None and isinstance(reply, Reply):
        answer = _completion_text(reply.body)
    elif answer is None and turn.captured is not None:
        answer = streamed_text(bytes(turn.captured))
    query = last_user_query(request.get("messages") or [])
    reference = turn.draft or None
    needs_body = reference is None or turn.shadow
    body = request if needs_body else {"model": turn.model}
    size = sum(len(text.encode("utf-8", "surrogatepass")) for text in (query, answer or "", reference or "", *turn.preferences))
    if needs_body:
        size += len(turn.raw_body) if turn.raw_body is not None and chat_body is None else len(orjson.dumps(request))
    return Job(
        request_id=turn.request_id,
        user_id=turn.user_id,
        model=turn.model or "",
        strategy=turn.strategy or "off",
        body=body,
        query=query,
        preferences=turn.preferences,
        answer=answer or None,
        reference=reference,
        judge_served=turn.judge,
        shadow=turn.shadow,
        size=size,
        traceparent=telemetry.traceparent(),
    )


def _completion_text(body: bytes) -> str | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return first_content(data)[0] if isinstance(data, dict) else None


def streamed_text(raw: bytes) -> str:
    """Choice 0's text in a captured event stream."""
    parts = []
    for event in raw.split(b"\n\n"):
        line = event.strip()
        if not line.startswith(b"data:") or line.endswith(b"[DONE]"):
            continue
        try:
            data = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            continue
        for choice in data.get("choices") or [] if isinstance(data, dict) else []:
            if choice.get("index", 0) == 0:
                parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts)

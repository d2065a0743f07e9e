"""A scripted OpenAI-compatible upstream on 127.0.0.1 that records what it receives.

Behaviour is chosen by the request's `model` (chat) or path:

  echo (any unknown model)  the last user message back; streams it in 3 chunks; usage; extra fields
  tool-call                 an assistant message with two tool calls (streamed as argument deltas)
  error-<status>            that HTTP status with an OpenAI error body (429 adds retry-after: 7)
  error-html                502 with an HTML body (not OpenAI-shaped)
  error-text                500 with a plain-text traceback
  error-traceback           500 with an OpenAI-shaped body whose message is a traceback (llama_cpp.server)
  error-detail              404 with FastAPI's `{"detail": ...}` (JSON, not an OpenAI error)
  slow-<ms>                 waits <ms> before answering, then echoes
  delay-<ms>                like slow; used by the benchmarks
  stream-break              streams two chunks, then drops the connection
  stream-stall              streams one chunk, then sends nothing more
  stream-no-done            streams chunks, then ends cleanly without data: [DONE]
  drip-<ms>                 streams with <ms> between chunks
  hang                      never answers; records when the proxy gives up (cancellation)
  flaky-<n>                 the first <n> requests get 503 (retry-after: 0), later ones echo
  script:<name>             answers from `FakeUpstream.scripts[name]` (tests register callables; a
                            message dict with `_finish` sets the finish_reason, e.g. "length")

POST /v1/responses is a native Responses API, scripted by the same model names (echo, tool-call,
error-<status>, slow-<ms>, drip-<ms>, data-only (no `event:` lines), stream-break, script:<name> whose callable returns a text, a list of
output items or a whole response object) plus stream-no-end (events without a terminal one);
`responses_native = False` makes it answer 404 as llama_cpp.server does (then the proxy must
translate to chat completions).

Other routes: GET /v1/models, POST /v1/embeddings, GET /v1/files/{id}/content (a large streamed
body), and any other /v1/* path echoes method, path, query, headers and body as JSON.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

CHUNK_ID = "chatcmpl-fake"


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def role(self) -> str:
        """Which pipeline call this was: gate, aligner, or chat (stage 1 / naive / off)."""
        return pipeline_role(self.json) if self.path == "/v1/chat/completions" else "other"

    @property
    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@dataclass
class FakeUpstream:
    received: list[Received] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    scripts: dict[str, Callable[[dict[str, Any]], Any]] = field(default_factory=dict)
    record: bool = True
    probes: list[Received] = field(default_factory=list)
    rejected_styles: set[str] = field(default_factory=set)  # structured-output styles answered with a 500
    responses_native: bool = True  # False: POST /v1/responses is a 404, as on a chat-only server

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[upstream_request_id])
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/files/{file_id}/content", self.file_content)
        app.router.add_route("*", "/v1/{tail:.*}", self.echo_route)
        return app

    def clear(self) -> None:
        self.received.clear()
        self.probes.clear()
        self.rejected_styles.clear()
        self.responses_native = True
        self.cancelled.clear()
        self.counters.clear()

    def response_bodies(self) -> list[dict[str, Any]]:
        """Bodies of the POST /v1/responses calls received."""
        return [item.json for item in self.received if item.path == "/v1/responses" and item.method == "POST"]

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """A native Responses API (see the module's docstring)."""
        if not self.responses_native:
            await self._record(request)
            return json_body({"detail": "Not Found"}, status=404)
        body = orjson.loads(await self._record(request) or b"{}")
        if "model" not in body:
            return error_response("400")
        model = str(body["model"])
        kind, _, arg = model.partition("-")
        if kind == "error":
            return error_response(arg)
        if kind in ("slow", "delay"):
            await asyncio.sleep(int(arg) / 1000)
        if model.startswith("script:"):
            answer = self.scripts[model[len("script:") :]](body)
            answer = await answer if asyncio.iscoroutine(answer) else answer
        elif model == "tool-call":
            answer = [
                {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_1", "name": "get_weather",
                 "arguments": '{"city": "Paris"}'},
            ]  # fmt: skip
        else:
            answer = response_input_text(body)
        response = answer if isinstance(answer, dict) else response_object(body, answer)
        if body.get("stream"):
            return await self._stream_response(request, response, model)
        return json_body(response)

    async def _stream_response(self, request: web.Request, response: dict[str, Any], model: str) -> web.StreamResponse:
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await reply.prepare(request)
        events = response_events(response)
        if model in ("stream-break", "stream-no-end"):
            events = events[:4]
        drip = int(model.split("-")[1]) / 1000 if model.startswith("drip-") else 0
        for event in events:  # `data-only`: without `event:` lines, as some compatible servers send them
            name = b"" if model == "data-only" else b"event: " + event["type"].encode() + b"\n"
            await reply.write(name + b"data: " + orjson.dumps(event) + b"\n\n")
            if drip:
                await asyncio.sleep(drip)
        if model == "stream-break":
            await asyncio.sleep(0.05)
            request.transport.abort()
            return reply
        await reply.write_eof()
        return reply

    def chat_bodies(self, role: str | None = None) -> list[dict[str, Any]]:
        """Bodies of the chat calls received, optionally only one role (chat, gate, aligner)."""
        return [item.json for item in self.received if item.path == "/v1/chat/completions" and role in (None, item.role)]

    async def _record(self, request: web.Request) -> bytes:
        body = await request.read()
        if request.headers.get("X-Client-Request-Id") == "perg-probe":  # the proxy's start-up probe
            self.probes.append(Received(request.method, request.path, "", dict(request.headers), body))
        elif self.record:
            self.received.append(
                Received(
                    request.method, request.path, request.rel_url.raw_query_string, {str(k): v for k, v in request.headers.items()}, body
                )
            )
        return body

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await self._record(request))
        if structured_style(body) in self.rejected_styles:  # as llama_cpp.server answers json_schema
            return json_body({"error": {"message": "response_format: unsupported", "type": "internal_server_error"}}, status=500)
        model = str(body.get("model", "echo"))
        kind, _, arg = model.partition("-")
        if model.startswith("script:"):
            return await self._scripted(request, body, model[len("script:") :])
        if kind == "error":
            return error_response(arg)
        if kind in ("slow", "delay"):
            await asyncio.sleep(int(arg) / 1000)
        if kind == "hang":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled.append(model)
                raise
        if kind == "flaky":
            seen = self.counters.get(model, 0)
            self.counters[model] = seen + 1
            if seen < int(arg):
                return error_response("503", retry_after="0")
        message = tool_call_message() if model == "tool-call" else {"role": "assistant", "content": scripted_reply(body)}
        if body.get("stream"):
            return await self._stream(request, body, message, model)
        return json_body(completion(body, message))

    async def _scripted(self, request: web.Request, body: dict[str, Any], name: str) -> web.StreamResponse:
        answer = self.scripts[name](body)
        if asyncio.iscoroutine(answer):
            answer = await answer
        if isinstance(answer, web.StreamResponse):
            return answer
        message = answer if isinstance(answer, dict) else {"role": "assistant", "content": answer}
        if body.get("stream"):
            return await self._stream(request, body, message, "script")
        return json_body(completion(body, message))

    async def _stream(self, request: web.Request, body: dict[str, Any], message: dict[str, Any], model: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "x-request-id": "up-stream"})
        await response.prepare(request)
        chunks = stream_chunks(body, message)
        if model == "stream-break":
            for chunk in chunks[:2]:
                await response.write(sse(chunk))
            await asyncio.sleep(0.05)
            request.transport.abort()
            return response
        if model == "stream-stall":
            await response.write(sse(chunks[0]))
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled.append(model)
                raise
        drip = int(model.split("-")[1]) / 1000 if model.startswith("drip-") else 0
        for chunk in chunks:
            await response.write(sse(chunk))
            if drip:
                await asyncio.sleep(drip)
        if model != "stream-no-done":
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def models(self, request: web.Request) -> web.Response:
        await self._record(request)
        names = ["echo", "tool-call", "slow-100"]
        return json_body({"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "fake"} for n in names]})

    async def embeddings(self, request: web.Request) -> web.Response:
        body = orjson.loads(await self._record(request))
        return json_body(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2, 0.3]}],
                "model": body.get("model"),
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        )

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        size = int(request.query.get("size", str(4 * 1024 * 1024)))
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        block = bytes(range(256)) * 256
        sent = 0
        while sent < size:
            part = block[: min(len(block), size - sent)]
            await response.write(part)
            sent += len(part)
            if request.query.get("break") and sent >= size // 2:
                request.transport.abort()
                return response
        await response.write_eof()
        return response

    async def echo_route(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        status = int(request.query.get("status", "200"))
        return json_body(
            {
                "method": request.method,
                "path": request.path,
                "query": request.rel_url.raw_query_string,
                "headers": {str(name): value for name, value in request.headers.items()},
                "body": body.decode("utf-8", "replace"),
            },
            status=status,
        )


@web.middleware
async def upstream_request_id(request: web.Request, handler: Any) -> web.StreamResponse:
    """Like OpenAI, answer with a request id of the upstream's own (derived from the one received)."""
    request_id = "up-" + request.headers.get("X-Client-Request-Id", "none")
    response = await handler(request)
    if not response.prepared:
        response.headers["x-request-id"] = request_id
    return response


def json_body(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers)


TRACEBACK = (
    'Traceback (most recent call last):\n  File "/srv/app/llama_cpp/server/app.py", line 376, in create_chat_completion\nValueError: boom'
)


def error_response(arg: str, retry_after: str | None = None) -> web.Response:
    if arg == "html":
        return web.Response(status=502, text="<html><body>Bad gateway</body></html>", content_type="text/html")
    if arg == "text":  # a server that prints its traceback as the body
        return web.Response(status=500, text=TRACEBACK, content_type="text/plain")
    if arg == "traceback":  # llama_cpp.server: an OpenAI-shaped body whose message holds a traceback
        return json_body({"error": {"message": TRACEBACK, "type": "internal_server_error", "param": None, "code": None}}, status=500)
    if arg == "detail":  # FastAPI's default error body: JSON, not an OpenAI error
        return json_body({"detail": "Not Found: /srv/app"}, status=404)
    status = int(arg)
    headers = {"x-ratelimit-remaining-requests": "0"}
    if status == 429:
        headers["retry-after"] = retry_after or "7"
    elif retry_after is not None:
        headers["retry-after"] = retry_after
    body = {"error": {"message": f"scripted error {status}", "type": "fake_error", "param": None, "code": f"fake_{status}"}}
    return json_body(body, status=status, headers=headers)


MARKS = {
    "You are an editor.": "aligner",
    "You decide which user preferences apply": "gate",
    "You judge whether any of a user's preferences": "judge_relevance",
    "You check whether a personalized answer keeps the facts": "judge_consistency",
    "You rate how well an answer follows": "judge_follow",
    "You are a careful, neutral evaluator.": "judge_follow",  # the paper protocol's follow rubric
}
USER_MARKS = {  # prompts of `eval run` that carry no system message of their own
    "You are a preference aligner.": "paper_aligner",
    "You answered a user's question earlier.": "self_critic",
}
JUDGE_DEFAULTS = {
    "judge_consistency": {"reason": "same facts", "verdict": "consistent"},
    "judge_follow": {"reason": "follows it", "score": 4},
}


def pipeline_role(body: dict[str, Any]) -> str:
    """Which of the proxy's own prompts a request carries (by its system message), else "chat"."""
    messages = body.get("messages") or []
    system = messages[0].get("content", "") if messages and messages[0].get("role") == "system" else ""
    if isinstance(system, str):
        for mark, role in MARKS.items():
            if system.startswith(mark):
                return role
    user = last_user_text(body)
    for mark, role in USER_MARKS.items():
        if user.startswith(mark):
            return role
    return "chat"


def scripted_reply(body: dict[str, Any]) -> str:
    """What the echo model says: the last user text, or, to the proxy's own prompts, a rewrite
    ("Personalized: <answer>"), a gate or relevance verdict (preferences about "I"/"my" life are
    irrelevant, every other one relevant), or a judge verdict (consistent; follow score 4)."""
    role = pipeline_role(body)
    text = last_user_text(body)
    if role in JUDGE_DEFAULTS:
        return orjson.dumps(JUDGE_DEFAULTS[role]).decode()
    if role == "judge_relevance":
        preferences = [line[2:] for line in text.splitlines() if line.startswith("- ")]
        relevant = any(not p.lower().startswith(("i ", "my ")) for p in preferences)
        return orjson.dumps({"reason": "scripted", "relevant": relevant}).decode()
    if role == "aligner":
        answer = text.split("### Answer to rewrite\n", 1)[-1].split("\n\n### Preferences", 1)[0]
        return f"Personalized: {answer}"
    if role == "paper_aligner":
        answer = text.split("### Initial answer\n", 1)[-1].split("\n\n### User preferences", 1)[0]
        return orjson.dumps({"response": f"Personalized: {answer}", "reasoning": "scripted"}).decode()
    if role == "self_critic":
        answer = text.split("### Your earlier answer\n", 1)[-1].split("\n\n### The user's preferences", 1)[0]
        return orjson.dumps({"critique": "scripted", "response": f"Revised: {answer}"}).decode()
    if role == "gate":
        verdicts = {}
        for line in text.splitlines():
            key, sep, preference = line.partition(": ")
            if sep and key[:1] == "p" and key[1:].isdigit():
                verdicts[key] = not preference.lower().startswith(("i ", "my "))
        return orjson.dumps(verdicts).decode()
    return text


def structured_style(body: dict[str, Any]) -> str:
    """The request's structured-output style, as `UpstreamSettings.structured_output` names them."""
    constraint = body.get("response_format")
    if not isinstance(constraint, dict):
        return "none"
    kind = constraint.get("type")
    return "json_object_schema" if kind == "json_object" and "schema" in constraint else str(kind)


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
            return str(content)
    return ""


def tool_call_message() -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}},
        ],
    }


def usage(body: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    completion_tokens = len(str(message.get("content") or "").split()) or 1
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}


def completion(body: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    n = body.get("n") or 1
    message = dict(message)
    finish = message.pop("_finish", None) or ("tool_calls" if message.get("tool_calls") else "stop")
    choices = [{"index": i, "message": message, "logprobs": None, "finish_reason": finish} for i in range(n)]
    if body.get("logprobs"):
        for choice in choices:
            choice["logprobs"] = {"content": [{"token": "hi", "logprob": -0.1, "bytes": [104, 105], "top_logprobs": []}]}
    return {
        "id": CHUNK_ID,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": choices,
        "usage": usage(body, message),
        "system_fingerprint": "fp_fake",
        "service_tier": "default",
        "x_fake_extension": {"kept": True},
    }


def stream_chunks(body: dict[str, Any], message: dict[str, Any]) -> list[dict[str, Any]]:
    base = {"id": CHUNK_ID, "object": "chat.completion.chunk", "created": 0, "model": body.get("model"), "system_fingerprint": "fp_fake"}
    message = dict(message)
    scripted_finish = message.pop("_finish", None)
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    if message.get("tool_calls"):
        for index, call in enumerate(message["tool_calls"]):
            args = call["function"]["arguments"]
            head = {"index": index, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": ""}}
            deltas.append({"tool_calls": [head]})
            half = len(args) // 2
            for part in (args[:half], args[half:]):
                deltas.append({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
    else:
        text = message.get("content") or ""
        third = max(1, len(text) // 3)
        for start in range(0, len(text), third):
            deltas.append({"content": text[start : start + third]})
    finish = scripted_finish or ("tool_calls" if message.get("tool_calls") else "stop")
    chunks = [{**base, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}]} for d in deltas]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**base, "choices": [], "usage": usage(body, message)})
    return chunks


def response_input_text(body: dict[str, Any]) -> str:
    """The last user text of a Responses request (what the echo model says back)."""
    given = body.get("input")
    if isinstance(given, str):
        return given
    for item in reversed(given or []):
        if item.get("role") == "user":
            content = item.get("content")
            return content if isinstance(content, str) else " ".join(part.get("text", "") for part in content)
    return ""


def response_object(body: dict[str, Any], answer: str | list[dict[str, Any]]) -> dict[str, Any]:
    """A completed response: a text answer as one message item, or the output items given."""
    if isinstance(answer, str):
        output = [{"id": "msg_fake", "type": "message", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": answer, "annotations": []}]}]  # fmt: skip
    else:
        output = answer
    words = len(str(body.get("input")).split()) + len(str(body.get("instructions") or "").split())
    out_words = sum(len(str(part.get("text", "")).split()) for item in output for part in item.get("content") or []) or 1
    return {
        "id": "resp_fake", "object": "response", "created_at": int(time.time()), "status": "completed", "error": None,
        "incomplete_details": None, "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model"), "output": output, "parallel_tool_calls": True, "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None}, "store": body.get("store", True), "temperature": 1.0,
        "text": body.get("text") or {"format": {"type": "text"}}, "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [], "top_p": 1.0, "truncation": "disabled", "user": None, "metadata": {},
        "usage": {"input_tokens": words, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": out_words,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": words + out_words},
    }  # fmt: skip


def response_events(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The event stream OpenAI sends for `response` (text in two deltas, arguments in one)."""
    shell = {**response, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [{"type": "response.created", "response": shell}, {"type": "response.in_progress", "response": shell}]
    for index, item in enumerate(response["output"]):
        empty = {
            **item,
            "status": "in_progress",
            **({"content": []} if item["type"] == "message" else {}),
            **({"arguments": ""} if item["type"] == "function_call" else {}),
        }
        events.append({"type": "response.output_item.added", "output_index": index, "item": empty})
        for position, part in enumerate(item.get("content") or []):
            where = {"item_id": item["id"], "output_index": index, "content_index": position}
            text = part.get("text", "")
            events.append({"type": "response.content_part.added", **where, "part": {**part, "text": ""}})
            for delta in (text[: len(text) // 2], text[len(text) // 2 :]):
                events.append({"type": "response.output_text.delta", **where, "delta": delta, "logprobs": []})
            events.append({"type": "response.output_text.done", **where, "text": text, "logprobs": []})
            events.append({"type": "response.content_part.done", **where, "part": part})
        if item["type"] == "function_call":
            where = {"item_id": item["id"], "output_index": index}
            events.append({"type": "response.function_call_arguments.delta", **where, "delta": item["arguments"]})
            events.append({"type": "response.function_call_arguments.done", **where, "arguments": item["arguments"]})
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    events.append({"type": "response.completed", "response": response})
    return [{**event, "sequence_number": number} for number, event in enumerate(events)]


def sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def main() -> None:
    """Run standalone (benchmarks): python -m tests.fake_upstream --port N."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18081)
    args = parser.parse_args()
    fake = FakeUpstream(record=False)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    web.run_app(fake.app(), host=args.host, port=args.port, print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    main()

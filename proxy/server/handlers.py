"""Thin HTTP handlers: read and check the request, call the pipeline, write the reply.

Nothing below this layer sees an aiohttp type.
"""

from __future__ import annotations

import asyncio
import functools
from importlib import resources
from typing import Any

import orjson
import structlog
import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import InvalidRequest, MethodNotAllowed, NotFound, ProxyError
from ..metrics import exposition
from ..monitor.job import job_of
from ..pipeline.forward import forward
from ..pipeline.responses_strategies import serve_responses
from ..pipeline.strategies import serve_chat
from ..preferences.resolve import personalization_headers, resolve, take_extension, unhonoured_source
from ..turn import Reply, StreamReply, Turn
from ..upstream.client import UpstreamClient
from ..upstream.headers import upstream_request_headers
from ..upstream.responses_chat import to_chat
from ..upstream.responses_from_chat import served_text
from ..upstream.responses_probe import responses_mode
from .middleware import TURN, read_body
from .protocol import check_chat_request, check_responses_request
from .responses import send_reply, send_stream
from .services import SERVICES, Services

log = structlog.get_logger("perg.content")
# the first path segment of the OpenAI API's other routes: the `endpoint` label of a request that
# asked for personalization where it cannot be given (anything else is "other")
OPENAI_ENDPOINTS = frozenset(
    {"completions", "embeddings", "responses", "moderations", "images", "audio", "files", "uploads", "batches", "assistants",
     "threads", "vector_stores", "fine_tuning", "realtime", "models", "conversations", "evals", "containers"}
)  # fmt: skip


async def respond(request: web.Request, turn: Turn, reply: Reply | StreamReply) -> web.StreamResponse:
    timeout = request.app[SERVICES].settings.server.write_timeout_seconds
    if isinstance(reply, StreamReply):
        return await send_stream(request, turn, reply, timeout)
    return await send_reply(request, turn, reply, timeout)


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    turn = request[TURN]
    services = request.app[SERVICES]
    data = await _take_request(request, turn, services, "chat")
    if services.settings.logging.log_content:
        log.info("chat_content", messages=data.get("messages"), preferences=list(turn.preferences))
    monitored = _sample(turn, services)
    reply = await serve_chat(turn, services.pipeline)
    response = await respond(request, turn, reply)
    if monitored:
        _submit(turn, reply, services)
    await services.limiter.spend_tokens(turn.client, turn.usage)
    return response


async def responses(request: web.Request) -> web.StreamResponse:
    """`POST /v1/responses`: the same pipeline as chat (`pipeline/responses.py`)."""
    turn = request[TURN]
    services = request.app[SERVICES]
    data = await _take_request(request, turn, services, "responses")
    if services.settings.logging.log_content:
        log.info("responses_content", input=data.get("input"), instructions=data.get("instructions"), preferences=list(turn.preferences))
    monitored = _sample(turn, services)
    reply = await serve_responses(turn, services.pipeline)
    response = await respond(request, turn, reply)
    if monitored:
        _submit_response(turn, reply, services)
    await services.limiter.spend_tokens(turn.client, turn.usage)
    return response


async def response_item(request: web.Request) -> web.StreamResponse:
    """`/v1/responses/{id}…` (retrieve, delete, cancel, input items): passed through to a native
    upstream; on an upstream served `via_chat` nothing is stored, so these need what is not there:
    a 400 naming `store`, as the other fields that need stored state are."""
    body = await read_body(request) if request.body_exists else None
    upstream = _route(request, body)
    if await responses_mode(upstream) == "via_chat":
        raise InvalidRequest(
            f"{request.method} {request.path} needs a stored response: upstream {upstream.name} serves the Responses API through "
            "chat completions (responses_api: via_chat) and the proxy stores nothing (`store: true` is accepted on create, but "
            "nothing is retrievable later).",
            param="store",
            code="unsupported_parameter",
        )
    return await passthrough(request)


async def post_only(request: web.Request) -> web.StreamResponse:
    raise MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}", headers={"Allow": "POST"})


async def _take_request(request: web.Request, turn: Turn, services: Services, kind: str) -> dict[str, Any]:
    """The checked body, its preferences resolved (the extension taken out), the turn filled."""
    payload = await read_body(request)
    data = await services.bodies.parse(payload, kind)
    if kind == "responses":
        check_responses_request(data)
    else:
        check_chat_request(data)
    had_extension = "personalization" in data
    wanted = await resolve(data, request.headers, turn.client, services.settings.personalization, services.store, services.metrics)
    turn.body = data
    turn.raw_body = None if had_extension else payload
    turn.model = data["model"]
    turn.stream = data.get("stream") is True
    turn.strategy = wanted.strategy
    turn.preferences = wanted.preferences
    turn.preference_source = wanted.source
    turn.user_id = wanted.user_id
    turn.return_draft = wanted.return_draft
    return data


def _sample(turn: Turn, services: Services) -> bool:
    """Decide (deterministically) whether the monitor judges this request; prepare to capture."""
    turn.judge, turn.shadow = services.monitor.sampler.decide(
        turn.request_id, turn.model or "", turn.strategy or "off", bool(turn.preferences)
    )
    # A pass-through stream's answer is only seen as it passes: capture it. Pref-Aligner (which
    # runs only with preferences) records its own answer and draft.
    passes_through = turn.strategy != "pref_aligner" or not turn.preferences
    if (turn.judge or turn.shadow) and turn.stream and passes_through:
        turn.captured = bytearray()
    return turn.judge or turn.shadow


def _submit(turn: Turn, reply: Reply | StreamReply, services: Services) -> None:
    """Hand a served, sampled request to the monitor; never fails the request."""
    if turn.error_code is not None or reply.status != 200:
        return
    try:
        services.monitor.submit(job_of(turn, reply))
    except Exception:  # monitoring never fails a request
        log.exception("monitor_submit_failed")


def _submit_response(turn: Turn, reply: Reply | StreamReply, services: Services) -> None:
    """A sampled Responses request goes to the monitor as the chat request it amounts to (the
    judges and shadow runs speak chat); one that needs stored state to mean anything is skipped."""
    if turn.error_code is not None or reply.status != 200 or turn.body is None:
        return
    try:
        body = to_chat({key: value for key, value in turn.body.items() if key != "stream"})
        if turn.answer is None:
            turn.answer = served_text(reply.body if isinstance(reply, Reply) else None, turn.captured)
        services.monitor.submit(job_of(turn, reply, body))
    except InvalidRequest:  # previous_response_id, a hosted tool …: no chat request means the same
        services.metrics.monitor_dropped.labels("stateful").inc()
    except Exception:  # monitoring never fails a request
        log.exception("monitor_submit_failed")


async def list_models(request: web.Request) -> web.StreamResponse:
    turn = request[TURN]
    upstreams = request.app[SERVICES].upstreams.all
    if len(upstreams) == 1:
        return await _forward_request(request, turn, upstreams[0], "/models", None)
    listings = await asyncio.gather(*(_model_listing(turn, upstream) for upstream in upstreams), return_exceptions=True)
    merged: dict[Any, Any] = {}  # by model id, which an odd upstream may leave out
    for listing in listings:
        if isinstance(listing, BaseException):
            continue
        for model in listing:
            merged.setdefault(model.get("id"), model)
    if not merged and isinstance(listings[0], ProxyError):
        raise listings[0]
    return json_response({"object": "list", "data": list(merged.values())})


async def _model_listing(turn: Turn, upstream: UpstreamClient) -> list[dict[str, Any]]:
    headers = upstream_request_headers(turn.headers, turn.request_id, upstream.settings.api_key, upstream.settings.headers)
    async with upstream.open("GET", "/models", headers=headers, stage="models") as response:
        body = await response.read()
    turn.upstream_wait += response.waited
    data = orjson.loads(body)
    return [item for item in data.get("data", []) if isinstance(item, dict) and "id" in item]


async def passthrough(request: web.Request) -> web.StreamResponse:
    """Any other `/v1/*` route: method, path, query and body forwarded, the response streamed back."""
    turn = request[TURN]
    segments = request.path.split("/")
    if "." in segments or ".." in segments:
        raise NotFound(f"Unknown route: {request.method} {request.path}")
    body = await read_body(request) if request.body_exists else None
    upstream = _route(request, body)
    body, extension = split_extension(request, body)
    if request.method == "POST" and (extension or personalization_headers(request.headers)):
        await _flag_unsupported(request, turn, extension, segments[2] if len(segments) > 2 else "")
    # rel_url, not raw_path: an absolute-form request line (`GET http://x/v1/p`) has the scheme
    # and host in raw_path, and slicing that would send the path outside /v1 upstream.
    return await _forward_request(request, turn, upstream, request.rel_url.raw_path[3:], body)


def split_extension(request: web.Request, body: bytes | None) -> tuple[bytes | None, dict[str, Any]]:
    """A JSON body with the proxy's `personalization` extension taken out (its preferences are
    the proxy's to use, never an upstream's to see), and the extension, checked as on chat. Any
    other body crosses as sent; the bytes are parsed only when they hold the extension's name."""
    if not body or b'"personalization"' not in body or request.content_type != "application/json":
        return body, {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body, {}
    if not isinstance(data, dict) or "personalization" not in data:
        return body, {}
    extension = take_extension(data)
    return orjson.dumps(data), extension


async def _flag_unsupported(request: web.Request, turn: Turn, extension: dict[str, Any], endpoint: str) -> None:
    """A POST that asks for personalization on a route that cannot give it: served as it is, but
    never silently (`x-perg-aligned: unsupported`, counted by endpoint and source)."""
    services = request.app[SERVICES]
    settings = services.settings.personalization
    source = await unhonoured_source(extension, request.headers, turn.client, settings, services.store, services.metrics)
    if source is not None:
        turn.aligned = "unsupported"
        label = endpoint if endpoint in OPENAI_ENDPOINTS else "other"
        services.metrics.child(services.metrics.personalization_unsupported, label, source).inc()


def _route(request: web.Request, body: bytes | None) -> UpstreamClient:
    upstreams = request.app[SERVICES].upstreams
    if len(upstreams.all) == 1:
        return upstreams.all[0]
    model = request.match_info.get("model")
    if model is None and body and request.content_type == "application/json":
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None
        model = data.get("model") if isinstance(data, dict) and isinstance(data.get("model"), str) else None
    return upstreams.for_model(model or "")


async def _forward_request(request: web.Request, turn: Turn, upstream: UpstreamClient, path: str, body: bytes | None) -> web.StreamResponse:
    settings = upstream.settings
    headers = upstream_request_headers(request.headers, turn.request_id, settings.api_key, settings.headers)
    reply = await forward(turn, upstream, request.method, path, data=body, headers=headers, query=request.rel_url.raw_query_string)
    return await respond(request, turn, reply)


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    services: Services = request.app[SERVICES]
    store, upstreams = await services.readiness.check()
    ready = store == "ok" and all(state == "ok" for state in upstreams.values()) and not services.draining
    status = "draining" if services.draining else ("ready" if ready else "not_ready")
    modes = {upstream.name: upstream.responses_api or "pending" for upstream in services.upstreams.all}
    body = {"status": status, "store": store, "upstreams": upstreams, "structured_output": services.probes.report(), "responses_api": modes}
    return json_response(body, 200 if ready else 503)


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI description of the proxy's own routes (proxy/openapi.yaml), as JSON."""
    return web.Response(body=openapi_json(), content_type="application/json")


@functools.cache
def openapi_json() -> bytes:
    return orjson.dumps(yaml.safe_load(resources.files("proxy").joinpath("openapi.yaml").read_text(encoding="utf-8")))


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[SERVICES].metrics.registry
    return web.Response(body=exposition(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

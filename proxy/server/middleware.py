"""The request middleware: request id, auth, structlog context, timing, metrics, error mapping.

One middleware rather than a chain of small ones: every request passes here, and each extra
layer costs a coroutine frame on the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re

import orjson
import structlog
from aiohttp import web

from .. import telemetry
from ..errors import MethodNotAllowed, NotFound, PayloadTooLarge, ProxyError, RequestTimeout, UnsupportedMediaType, error_payload
from ..metrics import Metrics
from ..turn import Turn
from .connections import ProxyRequestHandler
from .operator_page import UI_PATHS
from .responses import apply_turn_headers
from .services import SERVICES

TURN: web.RequestKey[Turn] = web.RequestKey("turn", Turn)
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
LABELS: dict[str, str] = {}  # route name -> label, filled as routes are first matched

log = structlog.get_logger("perg.request")


def route_of(request: web.Request) -> str:
    """A bounded route label for metrics and logs: the matched route's name up to its first ':'
    (`app.py` names every route), "unknown" when none matched (404, 405)."""
    name = request.match_info.route.name
    if name is None:
        return "unknown"
    label = LABELS.get(name)
    if label is None:
        label = LABELS[name] = name.partition(":")[0]
    return label


async def read_body(request: web.Request) -> bytes:
    """The request body, read within `server.body_timeout_seconds` (408 past it: a client that
    sends its body a byte at a time does not hold a connection for long)."""
    if request.content.is_eof():  # the whole body came with the headers: nothing to wait for
        return await request.read()
    timeout = request.app[SERVICES].settings.server.body_timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"The request body was not received within {timeout:g} seconds.") from None


def request_id_of(request: web.Request) -> str:
    incoming = request.headers.get("X-Request-ID")
    if incoming and REQUEST_ID.match(incoming):
        return incoming
    return os.urandom(16).hex()


def error_response(error: BaseException, turn: Turn) -> web.Response:
    status, body, headers = error_payload(error)
    turn.status = status
    turn.error_code = body["error"].get("code") or body["error"].get("type")
    response = web.Response(status=status, body=orjson.dumps(body), headers=headers)
    response.headers["Content-Type"] = "application/json"
    apply_turn_headers(response, turn)
    if getattr(error, "close_connection", False):
        response.force_close()
    return response


def refuse_encoded_body(request: web.Request) -> None:
    """No request body is ever decompressed (a small gzip body can inflate to gigabytes): a
    `Content-Encoding` other than identity is a 415, answered before any of the body is read."""
    encoding = request.headers.get("Content-Encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding[:40]!r} is not accepted: send the request body uncompressed.", param="Content-Encoding"
        )


def _from_http_exception(error: web.HTTPException, request: web.Request) -> ProxyError:
    if error.status == 404:
        return NotFound(f"Unknown route: {request.method} {request.path}")
    if error.status == 405:
        allowed = sorted(getattr(error, "allowed_methods", ()) or ())
        return MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}", headers={"Allow": ", ".join(allowed)})
    if error.status == 413:
        return PayloadTooLarge(f"The request body exceeds the limit of {request.app[SERVICES].settings.server.max_body_bytes} bytes.")
    generic = ProxyError(error.reason or "HTTP error")
    generic.status = error.status
    generic.type = "invalid_request_error" if error.status < 500 else "server_error"
    return generic


@web.middleware
async def request_middleware(request: web.Request, handler) -> web.StreamResponse:
    path = request.path
    turn = Turn(request_id=request_id_of(request), route=route_of(request), method=request.method, headers=request.headers)
    request[TURN] = turn
    services = request.app[SERVICES]
    metrics = services.metrics
    metrics.in_flight.inc()
    services.in_flight += 1
    connection = request.protocol
    if isinstance(connection, ProxyRequestHandler):
        connection.request_started()
    tokens = structlog.contextvars.bind_contextvars(request_id=turn.request_id)
    traced = telemetry.enter_request(turn.request_id, turn.method, turn.route, request.headers)
    try:
        refuse_encoded_body(request)
        if path.startswith(("/v1/", "/perg/")) and path not in UI_PATHS:
            turn.client = services.auth.check(request.headers.get("Authorization"), admin=path.startswith("/perg/"))
            await services.limiter.admit(turn.client)
        elif path == "/metrics":
            services.auth.check_metrics(request.headers.get("Authorization"))
        response = await handler(request)
        if not response.prepared:
            turn.status = response.status
            apply_turn_headers(response, turn)
        return response
    except web.HTTPException as error:
        return error_response(_from_http_exception(error, request), turn)
    except ProxyError as error:
        return error_response(error, turn)
    except Exception as error:  # the one place a stray exception becomes a 500
        log.exception("unhandled_error", path=path)
        return error_response(error, turn)
    finally:
        metrics.in_flight.dec()
        services.in_flight -= 1
        if not services.in_flight and services.all_done is not None:
            services.all_done.set()
        if isinstance(connection, ProxyRequestHandler):
            connection.request_finished()
        telemetry.leave_request(traced, turn)
        # After the response is handed to the transport, not before: logging and metrics are
        # off the response's critical path (the callback keeps this request's log context).
        asyncio.get_running_loop().call_soon(_record, request.path, turn, metrics)
        structlog.contextvars.reset_contextvars(**tokens)


def _record(path: str, turn: Turn, metrics: Metrics) -> None:
    elapsed = turn.elapsed()
    overhead = turn.overhead()
    strategy = turn.strategy or "none"
    status = turn.status or 499
    method = turn.method if turn.method in METHODS else "other"  # clients may send any token
    requests, duration, proxy_time = metrics.request_children(turn.route, method, status, strategy)
    requests.inc()
    duration.observe(elapsed)
    proxy_time.observe(overhead)
    if turn.first_token_at is not None:
        metrics.ttft.labels(strategy).observe(turn.first_token_at)
    if turn.error_code and status < 400:
        metrics.stream_errors.labels(turn.error_code).inc()
    if turn.route in ("metrics", "healthz", "readyz", "openapi.json") or not log.is_enabled_for(logging.INFO):
        return  # the line's fields are not even computed when it would be dropped
    log.info(
        "request",
        method=turn.method,
        path=path,
        route=turn.route,
        status=status,
        duration_ms=round(elapsed * 1000, 3),
        overhead_ms=round(overhead * 1000, 3),
        upstream_ms=round(turn.upstream_wait * 1000, 3),
        client=turn.client.name if turn.client else None,
        model=turn.model,
        stream=turn.stream,
        strategy=turn.strategy,
        preferences=turn.preference_source,
        aligned=turn.aligned,
        error=turn.error_code,
    )

"""Exceptions and the one map from an exception to OpenAI's error JSON and status code."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson


class ProxyError(Exception):
    """An error a client sees. Raised, never returned."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(ProxyError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(ProxyError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(ProxyError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(ProxyError):
    """A request body the proxy will not read: compressed (it never inflates a request)."""

    status = 415
    type = "invalid_request_error"
    code = "unsupported_content_encoding"
    close_connection = True  # the unread body stays unread: the connection closes after the answer


class RequestTimeout(ProxyError):
    """The client did not send its request (headers or body) within the server's read timeout."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    close_connection = True


class RateLimited(ProxyError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServiceUnavailable(ProxyError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class UpstreamUnreachable(ProxyError):
    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class UpstreamConnectFailed(UpstreamUnreachable):
    """No connection could be made: not a byte of the request reached the upstream."""


class UpstreamTimeout(ProxyError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class UpstreamProtocolError(ProxyError):
    """The upstream answered something that is not what the protocol promises."""

    status = 502
    type = "upstream_error"
    code = "bad_upstream_response"


class UpstreamStreamBroken(ProxyError):
    """The connection broke, or the body turned invalid, after the answer had started."""

    status = 502
    type = "upstream_error"
    code = "upstream_stream_broken"


class UpstreamStatusError(ProxyError):
    """The upstream answered with an error status: kept, with its error body when that is an
    OpenAI error object. Any other body (a traceback, an HTML page, plain text, other JSON) is
    never relayed: the client gets the OpenAI error shape with a short message, and
    `unrelayed_body` keeps the original for the log."""

    type = "upstream_error"

    def __init__(self, status: int, payload: bytes, headers: Mapping[str, str]) -> None:
        self.status = status
        self.upstream_body, kind = _openai_error(payload)
        self.unrelayed_body = payload if self.upstream_body is None else None
        message = self.upstream_body["error"]["message"] if self.upstream_body else f"upstream returned {status} with {kind}"
        super().__init__(str(message), code=f"upstream_http_{status}", headers=headers)

    def body(self) -> dict[str, Any]:
        return self.upstream_body or super().body()


TRACEBACK = re.compile(r'Traceback \(most recent call last\)|File "[^"\n]+", line \d+')


def _openai_error(payload: bytes) -> tuple[dict[str, Any] | None, str]:
    """The upstream's body when it already is an OpenAI error object whose message is not a
    stack trace, else None and what the body is."""
    if not payload.strip():
        return None, "an empty body"
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None, "a non-JSON body"
    if not isinstance(data, dict) or not isinstance(data.get("error"), dict):
        return None, "a JSON body that is not an OpenAI error"
    error = data["error"]
    message = error.get("message")
    if isinstance(message, str) and TRACEBACK.search(message):
        return None, "a stack trace in its error message"
    return {
        "error": {"message": message or "upstream error", "type": error.get("type"), "param": error.get("param"), "code": error.get("code")}
    }, "an OpenAI error"


class CallFailed(Exception):
    """A call the proxy makes in the background (a judge, a reference, a benchmark answer) that
    failed after its retries, or whose reply was unusable; `reason` is a bounded label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def describe_error(error: BaseException) -> str:
    """One bounded line for a failure that is recorded, not served: a reason code, then the message."""
    if isinstance(error, CallFailed):
        return str(error)[:300]
    if isinstance(error, ProxyError):
        return f"{error.code or type(error).__name__}: {error.message}"[:300]
    text = str(error)
    return (f"{type(error).__name__}: {text}" if text else type(error).__name__)[:300]


INTERNAL_MESSAGE = "The proxy failed to handle the request; the request id identifies it in the logs."


def error_payload(error: BaseException) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    """(status, OpenAI error body, extra headers) for any exception; unknown ones become a bare 500."""
    if isinstance(error, ProxyError):
        return error.status, error.body(), error.headers
    return 500, {"error": {"message": INTERNAL_MESSAGE, "type": "server_error", "param": None, "code": "internal_error"}}, {}

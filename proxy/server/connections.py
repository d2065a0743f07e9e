"""The aiohttp runner of the proxy: handlers cancelled when their client goes away (so upstream
work stops), a grace period for in-flight requests when it stops, header limits that fit the
X-Perg-* headers, and protocol-level errors in OpenAI's shape."""

from __future__ import annotations

import orjson
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from ..errors import INTERNAL_MESSAGE, InvalidRequest, ProxyError

log = structlog.get_logger("perg.runner")

HEADER_LIMIT = 64 * 1024  # an X-Perg-Preferences header may carry up to 32 preferences of 1,000 chars


def make_runner(app: web.Application, shutdown_timeout: float = 30.0) -> web.AppRunner:
    """A runner whose handlers are cancelled when their client disconnects (so upstream work
    stops), which gives in-flight requests `shutdown_timeout` seconds when it stops, and whose
    protocol-level errors (a header too long, a malformed request line) are OpenAI errors too."""
    return ProxyRunner(
        app,
        handler_cancellation=True,
        auto_decompress=False,  # a compressed request body is refused (415), never inflated
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        max_field_size=HEADER_LIMIT,
        max_line_size=HEADER_LIMIT,
    )


class ProxyRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = ProtocolErrorServer  # only adds the override below
        return server


class ProtocolErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return OpenAIErrorHandler(self, loop=self._loop, **self._kwargs)


class OpenAIErrorHandler(RequestHandler):
    """aiohttp answers requests it cannot parse itself, before any handler runs; answer them in
    OpenAI's error shape, without a traceback, and log them as warnings."""

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; the connection is closed instead")
        log.warning("unparseable_request", status=status, error=type(exc).__name__ if exc else None)
        error = InvalidRequest(_protocol_message(status, exc)) if status < 500 else ProxyError(INTERNAL_MESSAGE)
        error.status = status
        response = web.Response(status=status, body=orjson.dumps(error.body()), content_type="application/json")
        response.force_close()
        return response


def _protocol_message(status: int, exc: BaseException | None) -> str:
    detail = getattr(exc, "message", None) or str(exc or "") or "bad request"
    return f"The request could not be parsed as HTTP: {str(detail).splitlines()[0][:200]}"

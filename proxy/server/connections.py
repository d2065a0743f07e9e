"""The proxy's client connections: how aiohttp serves them, and the limits that keep a client
without a key from using them all up.

- handlers are cancelled when their client disconnects (so upstream work stops);
- no request body is decompressed (the middleware answers `Content-Encoding` with 415);
- header limits fit the X-Perg-* headers; protocol-level errors are OpenAI errors;
- a request's headers must arrive within `server.header_timeout_seconds` of its first byte (or of
  the connection opening), else the connection is closed (slowloris);
- an idle kept-alive connection is closed after `server.keepalive_timeout_seconds`;
- at most `server.max_connections` connections are open; one more is closed at once. The default
  stays below the file-descriptor limit and keeps room for the upstream sockets and files.

Only aiohttp's public API: `runner.server` (the web server) is wrapped by this module's protocol
factory, and the listener is opened here with `loop.create_server`, not by a `TCPSite`. The one
coupling left is the subclass of `web.RequestHandler` (exported, but its hooks are not documented):
pyproject.toml pins aiohttp below 3.15, and tests/test_layout.py fails loudly if the hooks change.
"""

from __future__ import annotations

import asyncio
import resource

import orjson
import structlog
from aiohttp import web

from ..config import Settings
from ..errors import INTERNAL_MESSAGE, InvalidRequest, ProxyError
from ..metrics import Metrics
from .services import SERVICES

log = structlog.get_logger("perg.runner")

HEADER_LIMIT = 64 * 1024  # an X-Perg-Preferences header may carry up to 32 preferences of 1,000 chars
FILE_RESERVE = 64  # descriptors kept for the store, logs, the local model's pipes, the listener


def make_runner(app: web.Application, shutdown_timeout: float = 0.25) -> web.AppRunner:
    """The runner of the proxy's application. Its `shutdown_timeout` only bounds the handlers left
    after `lifecycle.drain` has waited for them; `listen()` opens its listener."""
    return web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_timeout)


async def listen(runner: web.AppRunner, *, host: str | None = None, port: int | None = None, reuse_port: bool = False) -> asyncio.Server:
    """Accept connections for `runner` (set up) on the configured address, with this module's limits."""
    server = runner.server
    assert server is not None, "runner.setup() first"
    services = runner.app[SERVICES]
    settings = services.settings.server
    factory = ConnectionFactory(server, services.settings, services.metrics)
    return await asyncio.get_running_loop().create_server(
        factory,
        settings.host if host is None else host,
        settings.port if port is None else port,
        backlog=settings.backlog,
        reuse_port=reuse_port or None,
    )


def connection_cap(settings: Settings) -> int:
    """`server.max_connections`, else what the file-descriptor limit leaves once every upstream
    pool (the request path's and the monitor's) and a reserve for files are counted."""
    if settings.server.max_connections is not None:
        return settings.server.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    pools = 4 if settings.monitor.enabled else 2  # pass-through and stage calls; the monitor's own clients
    upstream = pools * sum(upstream.max_connections for upstream in settings.upstreams)
    return max(16, soft - upstream - FILE_RESERVE)


def raise_file_limit() -> int:
    """Lift the soft file-descriptor limit to the hard one (as Go and nginx do); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


class ConnectionFactory:
    """The listener's protocol factory: one `ProxyRequestHandler` per connection, counted."""

    def __init__(self, server: web.Server, settings: Settings, metrics: Metrics) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.cap = connection_cap(settings)
        self.open = 0
        self.header_timeout = settings.server.header_timeout_seconds
        # late headers are found by a sweep this often: a connection is cut within a quarter of
        # the timeout after it (at most a second)
        self.sweep_every = min(1.0, self.header_timeout / 4)
        self.handlers: set[ProxyRequestHandler] = set()
        self.sweeping: asyncio.TimerHandle | None = None
        self.refused = metrics.connections_refused
        self.kwargs = {
            "keepalive_timeout": settings.server.keepalive_timeout_seconds,
            "auto_decompress": False,  # a compressed request body is refused (415), never inflated
            "access_log": None,
            "max_field_size": HEADER_LIMIT,
            "max_line_size": HEADER_LIMIT,
        }

    def __call__(self) -> ProxyRequestHandler:
        return ProxyRequestHandler(self, self.server, loop=self.loop, **self.kwargs)

    def admit(self, handler: ProxyRequestHandler) -> None:
        self.open += 1
        self.handlers.add(handler)
        if self.sweeping is None:
            self.sweeping = self.loop.call_later(self.sweep_every, self.sweep)

    def release(self, handler: ProxyRequestHandler) -> None:
        self.open -= 1
        self.handlers.discard(handler)

    def sweep(self) -> None:
        """Close the connections whose headers are late; again in `sweep_every` while any is open.
        One timer for every connection, rather than one armed and cancelled per request."""
        self.sweeping = None
        late = self.loop.time() - self.header_timeout
        for handler in [handler for handler in self.handlers if handler.waiting_since is not None and handler.waiting_since <= late]:
            handler.headers_late()
        if self.handlers:
            self.sweeping = self.loop.call_later(self.sweep_every, self.sweep)


class ProxyRequestHandler(web.RequestHandler):
    """aiohttp's connection handler with the header deadline, the connection cap, and protocol
    errors (a header too long, a malformed request line) answered in OpenAI's error shape."""

    def __init__(self, factory: ConnectionFactory, server: web.Server, **kwargs) -> None:
        super().__init__(server, **kwargs)
        self.factory = factory
        self.admitted = False
        self.idle = True  # no request being handled: the next bytes start a header deadline
        self.waiting_since: float | None = None  # when the headers now awaited were due to start (loop time)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        factory = self.factory
        if factory.open >= factory.cap:
            factory.refused.labels("limit").inc()
            transport.close()  # the descriptor is freed now; the client may retry
            return
        self.admitted = True
        factory.admit(self)
        super().connection_made(transport)
        self.waiting_since = factory.loop.time()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.admitted:
            return
        self.admitted = False
        self.factory.release(self)
        self.waiting_since = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.idle and self.waiting_since is None:
            self.waiting_since = self.factory.loop.time()
        super().data_received(data)

    def headers_late(self) -> None:
        """Found by the factory's sweep: no request's headers arrived within the timeout."""
        self.waiting_since = None
        if self.idle:
            self.factory.refused.labels("header_timeout").inc()
            self.force_close()

    def request_started(self) -> None:
        """Called by the middleware: the request's headers are in."""
        self.idle = False
        self.waiting_since = None

    def request_finished(self) -> None:
        self.idle = True

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
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

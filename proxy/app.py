"""`create_app(settings)`: routes, the middleware, and the shared resources' lifetimes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from . import handlers
from .auth import Authenticator
from .config import Settings
from .metrics import Metrics
from .middleware import request_middleware
from .services import SERVICES, Services
from .upstream import Upstreams

log = structlog.get_logger("perg.app")


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> web.Application:
    app = web.Application(middlewares=[request_middleware], client_max_size=settings.server.max_body_bytes)
    metrics = Metrics(registry)
    app[SERVICES] = Services(
        settings=settings,
        metrics=metrics,
        auth=Authenticator(settings.auth),
        upstreams=Upstreams(settings.upstreams, metrics),
    )
    app.cleanup_ctx.append(_upstreams)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_route("*", "/v1/models/{model}", handlers.passthrough)
    app.router.add_route("*", "/v1/{tail:.*}", handlers.passthrough)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    return app


async def _upstreams(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    if services.auth.open:
        log.warning("auth_open", detail="auth.client_keys is empty: any client may use the proxy")
    await services.upstreams.start()
    yield
    await services.upstreams.close()


def make_runner(app: web.Application) -> web.AppRunner:
    """A runner whose handlers are cancelled when their client disconnects (so upstream work stops)."""
    return web.AppRunner(app, handler_cancellation=True, access_log=None)

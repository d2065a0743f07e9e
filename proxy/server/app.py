"""`create_app(settings)`: routes, the middleware, and the shared resources' lifetimes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from .. import telemetry
from ..config import ConfigError, Settings
from ..metrics import Metrics
from ..monitor.service import Monitor
from ..pipeline.context import PipelineContext
from ..preferences.handle import StoreHandle
from ..prompts.loader import Prompts
from ..upstream.client import Upstreams
from ..upstream.responses_probe import probe_all
from . import admin, handlers, monitor_admin, operator_page
from .auth import Authenticator
from .heavy_bodies import BodyChecker
from .middleware import request_middleware
from .protocol import BodyLimits
from .ratelimit import RateLimiter
from .readiness import Readiness
from .services import SERVICES, Services

log = structlog.get_logger("perg.app")


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> web.Application:
    """The proxy as an aiohttp application; resources open when it starts, close when it stops."""
    app = web.Application(middlewares=[request_middleware], client_max_size=settings.server.max_body_bytes)
    metrics = Metrics(registry)
    upstreams = Upstreams(settings.upstreams, metrics, log_bodies=settings.logging.log_content)
    prompts = load_prompts(settings)
    store = StoreHandle(settings.profiles)
    app[SERVICES] = Services(
        settings=settings,
        metrics=metrics,
        auth=Authenticator(settings.auth),
        upstreams=upstreams,
        store=store,
        pipeline=PipelineContext(
            settings=settings.personalization,
            upstreams=upstreams,
            metrics=metrics,
            prompts=prompts,
            heartbeat_seconds=settings.server.heartbeat_seconds,
            log_content=settings.logging.log_content,
        ),
        monitor=Monitor(settings, metrics, store, prompts, upstreams),
        limiter=RateLimiter(settings.auth.rate_limits, metrics),
        bodies=BodyChecker(body_limits(settings)),
        readiness=Readiness(store, upstreams),
    )
    app.cleanup_ctx.append(_tracing)
    app.cleanup_ctx.append(_upstreams)
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(_monitor)
    admin.add_routes(app)
    monitor_admin.add_routes(app)
    operator_page.add_routes(app)
    # Every route's name is "<metrics label>[:<detail>]": the router is the one route table.
    app.router.add_post("/v1/chat/completions", handlers.chat_completions, name="chat_completions")
    app.router.add_post("/v1/responses", handlers.responses, name="responses")
    app.router.add_route("*", "/v1/responses", handlers.post_only, name="responses:other")
    app.router.add_route("*", "/v1/responses/{tail:.+}", handlers.response_item, name="responses:item")
    app.router.add_get("/v1/models", handlers.list_models, name="models:list")
    app.router.add_route("*", "/v1/models/{model}", handlers.passthrough, name="models:item")
    app.router.add_route("*", "/v1/{tail:.*}", handlers.passthrough, name="passthrough")
    app.router.add_get("/healthz", handlers.healthz, name="healthz")
    app.router.add_get("/readyz", handlers.readyz, name="readyz")
    app.router.add_get("/metrics", handlers.metrics, name="metrics")
    app.router.add_get("/openapi.json", handlers.openapi, name="openapi.json")
    return app


async def _tracing(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    tracing = telemetry.install(services.settings.telemetry.traces, services.metrics)
    yield
    await telemetry.uninstall(tracing)


async def _upstreams(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    if services.auth.open:
        log.warning("auth_open", detail="auth.client_keys is empty: any client may use the proxy")
    await services.upstreams.start()
    probes = [
        asyncio.create_task(services.probes.run(services.upstreams), name="perg-style-probe"),
        asyncio.create_task(probe_all(services.upstreams), name="perg-responses-probe"),
    ]
    yield
    for probe in probes:
        probe.cancel()
        with suppress(asyncio.CancelledError):
            await probe
    await services.upstreams.close()
    await services.limiter.close()
    services.bodies.close()


async def _store(app: web.Application) -> AsyncIterator[None]:
    store = app[SERVICES].store
    await store.start()
    yield
    await store.close()


async def _monitor(app: web.Application) -> AsyncIterator[None]:
    monitor = app[SERVICES].monitor
    await monitor.start()
    yield
    await monitor.stop()


def body_limits(settings: Settings) -> BodyLimits:
    server = settings.server
    return BodyLimits(server.max_json_values, server.max_messages, server.max_tools, server.max_logit_bias, server.max_json_depth)


def load_prompts(settings: Settings) -> Prompts:
    try:
        return Prompts.load(settings.personalization.prompts)
    except OSError as error:
        raise ConfigError(f"personalization.prompts: cannot read {error.filename}: {error.strerror}") from None

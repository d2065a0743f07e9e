"""The shared resources of one running proxy, held on the aiohttp application."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from ..config import Settings
from ..metrics import Metrics
from ..monitor.service import Monitor
from ..pipeline.context import PipelineContext
from ..pipeline.probe import StyleProbes
from ..preferences.handle import StoreHandle
from ..upstream.client import Upstreams
from .auth import Authenticator
from .heavy_bodies import BodyChecker
from .ratelimit import RateLimiter
from .readiness import Readiness


@dataclass(slots=True)
class Services:
    settings: Settings
    metrics: Metrics
    auth: Authenticator
    upstreams: Upstreams
    store: StoreHandle
    pipeline: PipelineContext
    monitor: Monitor
    limiter: RateLimiter
    bodies: BodyChecker
    readiness: Readiness
    draining: bool = False
    probes: StyleProbes = field(default_factory=StyleProbes)
    in_flight: int = 0  # requests being handled, for the drain
    all_done: asyncio.Event | None = None  # set by the drain; the last request to finish sets it


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)

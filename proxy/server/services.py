"""The shared resources of one running proxy, held on the aiohttp application."""

from __future__ import annotations

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
from .ratelimit import RateLimiter


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
    draining: bool = False
    probes: StyleProbes = field(default_factory=StyleProbes)


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)

"""The shared resources of one running proxy, held on the aiohttp application."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from .auth import Authenticator
from .config import Settings
from .metrics import Metrics
from .upstream import Upstreams


@dataclass(slots=True)
class Services:
    settings: Settings
    metrics: Metrics
    auth: Authenticator
    upstreams: Upstreams
    draining: bool = False


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)

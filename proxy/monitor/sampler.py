"""Deterministic sampling keyed by a server-side secret: a request is sampled when
HMAC-SHA256(secret, request id), read as a number in [0, 1), is below the rate. So a 5% sample lies
inside a 20% one, replicas that share `monitor.sampling_secret` agree, and a client that picks its
own `X-Request-ID` cannot choose whether it is judged or shadowed (it does not know the secret).
Without a configured secret each process draws a random one at start."""

from __future__ import annotations

import hashlib
import hmac
import os
from fnmatch import fnmatchcase

from ..config import MonitorSettings

SCALE = float(2**64)


def fraction(request_id: str, secret: bytes) -> float:
    """HMAC-SHA256(secret, request_id)'s first 8 bytes as a number in [0, 1)."""
    digest = hmac.new(secret, request_id.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / SCALE


class Sampler:
    def __init__(self, settings: MonitorSettings) -> None:
        self.settings = settings
        configured = settings.sampling_secret
        self._secret = configured.encode("utf-8") if configured else os.urandom(32)

    def eligible(self, model: str, strategy: str, has_preferences: bool) -> bool:
        """The filters: model patterns, strategies, and whether the request had preferences."""
        filters = self.settings.filters
        if filters.require_preferences and not has_preferences:
            return False
        if filters.strategies and strategy not in filters.strategies:
            return False
        return not filters.models or any(fnmatchcase(model, pattern) for pattern in filters.models)

    def decide(self, request_id: str, model: str, strategy: str, has_preferences: bool) -> tuple[bool, bool]:
        """(judge the served answer, also run and judge the shadow strategy)."""
        if not self.settings.enabled or not self.eligible(model, strategy, has_preferences):
            return False, False
        point = fraction(request_id, self._secret)
        return point < self.settings.sample_rate, point < self.settings.shadow_rate

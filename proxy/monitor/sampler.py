"""Deterministic sampling: a request is sampled when sha256(request id), read as a number in
[0, 1), is below the rate. So a 5% sample lies inside a 20% one, and replicas agree."""

from __future__ import annotations

import hashlib
from fnmatch import fnmatchcase

from ..config import MonitorSettings

SCALE = float(2**64)


def fraction(request_id: str) -> float:
    """sha256(request_id)'s first 8 bytes as a number in [0, 1)."""
    return int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big") / SCALE


class Sampler:
    def __init__(self, settings: MonitorSettings) -> None:
        self.settings = settings

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
        point = fraction(request_id)
        return point < self.settings.sample_rate, point < self.settings.shadow_rate

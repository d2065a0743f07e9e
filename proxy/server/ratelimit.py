"""Per-key rate limits: requests and tokens per minute, over a sliding window.

The window is the usual two-bucket approximation: the count of the current minute plus the
previous minute's count weighted by how much of it still lies in the last 60 seconds. With
`auth.rate_limits.redis_url` the buckets live in Redis (INCRBY, expiring after two minutes), so
every replica and worker counts together; otherwise each process counts alone. A Redis that
fails does not fail requests: the check is skipped and counted (fail open).

Requests are counted when they arrive (a refused request is taken back out); tokens when the
upstream reports its usage, so a key over its token budget is refused from its next request on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

import structlog

from ..config import ClientKey, RateLimitSettings
from ..errors import RateLimited
from ..metrics import Metrics

WINDOW = 60.0
log = structlog.get_logger("perg.ratelimit")


class Buckets(Protocol):
    async def add(self, name: str, window: int, amount: int) -> tuple[int, int]:
        """Add to the bucket of `window`; return (this window's count, the previous one's)."""
        ...

    async def close(self) -> None: ...


class MemoryBuckets:
    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}

    async def add(self, name: str, window: int, amount: int) -> tuple[int, int]:
        key = (name, window)
        self._counts[key] = self._counts.get(key, 0) + amount
        if len(self._counts) > 10_000:  # bounded: forget windows older than the previous one
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= window - 1}
        return self._counts[key], self._counts.get((name, window - 1), 0)

    async def close(self) -> None:
        return None


class RedisBuckets:
    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio as redis

        self._redis = redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        self._prefix = prefix

    async def add(self, name: str, window: int, amount: int) -> tuple[int, int]:
        current, previous = f"{self._prefix}:{name}:{window}", f"{self._prefix}:{name}:{window - 1}"
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incrby(current, amount)
            pipe.expire(current, int(2 * WINDOW))
            pipe.get(previous)
            count, _, before = await pipe.execute()
        return int(count), int(before or 0)

    async def close(self) -> None:
        await self._redis.aclose()


@dataclass(frozen=True, slots=True)
class Limits:
    requests: int
    tokens: int


UNLIMITED = Limits(0, 0)


class RateLimiter:
    def __init__(self, settings: RateLimitSettings, metrics: Metrics) -> None:
        self.settings = settings
        self._metrics = metrics
        self._buckets: Buckets = RedisBuckets(settings.redis_url, settings.key_prefix) if settings.redis_url else MemoryBuckets()

    def limits(self, client: ClientKey) -> Limits:
        requests = client.requests_per_minute if client.requests_per_minute is not None else self.settings.requests_per_minute
        tokens = client.tokens_per_minute if client.tokens_per_minute is not None else self.settings.tokens_per_minute
        return Limits(requests, tokens) if requests or tokens else UNLIMITED

    async def admit(self, client: ClientKey | None) -> None:
        """Count one request for the key; 429 with retry-after when over either limit."""
        if client is None:
            return
        limits = self.limits(client)
        if not limits.requests and not limits.tokens:
            return
        now = time.time()
        if limits.requests:
            rate, retry = await self._observe(f"{client.name}:requests", now, 1)
            if rate is not None and rate > limits.requests:
                await self._observe(f"{client.name}:requests", now, -1)
                raise self._refused("requests", limits.requests, retry)
        if limits.tokens:
            rate, retry = await self._observe(f"{client.name}:tokens", now, 0)
            if rate is not None and rate >= limits.tokens:
                raise self._refused("tokens", limits.tokens, retry)

    async def spend_tokens(self, client: ClientKey | None, usage: dict | None) -> None:
        """Count the tokens a response used against the key's token budget."""
        if client is None or not usage or not self.limits(client).tokens:
            return
        total = usage.get("total_tokens")
        if isinstance(total, int) and total > 0:
            await self._observe(f"{client.name}:tokens", time.time(), total)

    async def _observe(self, name: str, now: float, amount: int) -> tuple[float | None, float]:
        """(the sliding-window count after adding `amount`, seconds until the window moves on)."""
        window = int(now // WINDOW)
        elapsed = now - window * WINDOW
        try:
            current, previous = await self._buckets.add(name, window, amount)
        except Exception as error:  # noqa: BLE001 - a limiter that fails lets traffic through
            self._metrics.rate_limit_errors.labels(type(error).__name__[:40]).inc()
            log.warning("rate_limit_unavailable", error=str(error)[:200])
            return None, 0.0
        weight = (WINDOW - elapsed) / WINDOW
        return current + previous * weight, max(1.0, WINDOW - elapsed)

    def _refused(self, kind: str, limit: int, retry: float) -> RateLimited:
        self._metrics.rate_limited.labels(kind).inc()
        seconds = str(math.ceil(retry))
        return RateLimited(
            f"Rate limit reached: {limit} {kind} per minute for this key. Retry after {seconds} s.", headers={"retry-after": seconds}
        )

    async def close(self) -> None:
        await self._buckets.close()

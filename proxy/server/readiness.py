"""What `/readyz` reports: the store's ping and one `GET /models` per upstream, cached.

`/readyz` needs no key, and each probe is an upstream call made with the proxy's own key: without
a cache, 1,000 unauthenticated calls made 1,000 upstream calls in about a second. The result is
kept for `CACHE_SECONDS`, and callers that arrive while a check runs share it.
"""

from __future__ import annotations

import asyncio
import time

from ..errors import ProxyError
from ..preferences.handle import StoreHandle
from ..upstream.client import UpstreamClient, Upstreams
from ..upstream.headers import upstream_request_headers

CACHE_SECONDS = 1.0
PROBE_TIMEOUT = 2.0

Result = tuple[str, dict[str, str]]  # the store's state, each upstream's


class Readiness:
    def __init__(self, store: StoreHandle, upstreams: Upstreams) -> None:
        self._store = store
        self._upstreams = upstreams
        self._checked_at = float("-inf")
        self._result: Result | None = None
        self._running: asyncio.Task[Result] | None = None

    async def check(self) -> Result:
        """("ok" or why not, {upstream: "ok" or why not}), at most CACHE_SECONDS old."""
        if self._result is not None and time.monotonic() - self._checked_at < CACHE_SECONDS:
            return self._result
        if self._running is None:
            self._running = asyncio.ensure_future(self._check())
            self._running.add_done_callback(self._done)
        return await asyncio.shield(self._running)

    def _done(self, task: asyncio.Task[Result]) -> None:
        self._running = None
        if not task.cancelled() and task.exception() is None:
            self._result, self._checked_at = task.result(), time.monotonic()

    async def _check(self) -> Result:
        upstreams = self._upstreams.all
        store, *states = await asyncio.gather(self._store.ping(), *(probe(upstream) for upstream in upstreams))
        return store, {upstream.name: state for upstream, state in zip(upstreams, states, strict=True)}


async def probe(upstream: UpstreamClient) -> str:
    headers = upstream_request_headers({}, "readyz", upstream.settings.api_key, upstream.settings.headers)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            async with upstream.open("GET", "/models", headers=headers, stage="readyz") as response:
                await response.read()
    except ProxyError as error:
        return error.code or "error"
    except TimeoutError:
        return "upstream_timeout"
    return "ok"

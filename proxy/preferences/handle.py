"""`StoreHandle`: the configured store for a running proxy, which survives a database that is
down at start or goes away: the store is opened at start if it can be, else on first use, and
at most every `RETRY_SECONDS` after a failure. Until then, callers get `StoreUnavailable`."""

from __future__ import annotations

import asyncio
import time

import structlog

from ..config import ProfileSettings
from .store import Store, open_store
from .store_errors import StoreUnavailable

RETRY_SECONDS = 5.0
log = structlog.get_logger("perg.store")


class StoreHandle:
    def __init__(self, settings: ProfileSettings) -> None:
        self.settings = settings
        self._store: Store = open_store(settings)
        self._opened = False
        self._last_attempt = float("-inf")
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        try:
            await self.get()
        except StoreUnavailable as error:
            log.error("store_unavailable_at_start", backend=self.settings.backend, error=error.message)

    async def get(self) -> Store:
        """The opened store, or `StoreUnavailable` (retried at most every RETRY_SECONDS)."""
        if self._opened:
            return self._store
        async with self._lock:
            if self._opened:
                return self._store
            if time.monotonic() - self._last_attempt < RETRY_SECONDS:
                raise StoreUnavailable(f"the {self.settings.backend} profile store is unavailable; retrying shortly")
            self._last_attempt = time.monotonic()
            await self._store.open()
            self._opened = True
            log.info("store_opened", backend=self.settings.backend)
        return self._store

    async def ping(self) -> str:
        """ "ok", or the reason the store cannot be used now (for /readyz)."""
        try:
            await (await self.get()).ping()
        except StoreUnavailable as error:
            return error.code or "store_unavailable"
        return "ok"

    async def close(self) -> None:
        if self._opened:
            await self._store.close()
            self._opened = False

"""Chat bodies that would hold the event loop: checked in a worker process before they are parsed.

orjson and pydantic-core hold the GIL while they work, so a thread would not free the loop: a
body of 300,000 tiny messages took about 0.6 s to parse and 2.5 s to validate on the loop, and a
900,000-key `logit_bias` 1.2 s, while every other client waited. A body with many JSON separators
(commas, braces, brackets: counted on the bytes, cheaply) is first parsed and checked in one
worker process (`protocol.inspect_chat_body`): one past the limits is refused from there and never
parsed on the loop; one within them is then parsed here, its cost bounded by those limits.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..errors import InvalidRequest, ServiceUnavailable
from .protocol import BodyLimits, inspect_chat_body, parse_chat_body

HEAVY_MARKS = 20_000  # separators; below this a body parses and validates in a few milliseconds


def looks_heavy(payload: bytes) -> bool:
    return payload.count(b",") + payload.count(b"{") + payload.count(b"[") > HEAVY_MARKS


class BodyChecker:
    def __init__(self, limits: BodyLimits) -> None:
        self.limits = limits
        self._pool: ProcessPoolExecutor | None = None

    async def parse(self, payload: bytes, kind: str = "chat") -> dict[str, Any]:
        """The chat (or Responses, `kind`) body as a JSON object within the limits, or a 400
        naming what is past them."""
        if looks_heavy(payload):
            verdict = await self._inspect(payload, kind)
            if verdict is not None:
                message, param, code = verdict
                raise InvalidRequest(message, param=param, code=code)
        return parse_chat_body(payload, self.limits, kind)

    async def _inspect(self, payload: bytes, kind: str) -> tuple[str, str | None, str | None] | None:
        if self._pool is None:  # started on the first heavy body: most deployments never need it
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, inspect_chat_body, payload, self.limits, kind)
        except BrokenProcessPool:
            self.close()
            raise ServiceUnavailable("The request body could not be checked (the checking process died); retry.") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # the worker process is gone when this returns
            self._pool = None

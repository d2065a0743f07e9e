"""`Turn`: everything the proxy knows about one client request, and the replies it produces."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from multidict import CIMultiDict

from .config import ClientKey

T = TypeVar("T")


@dataclass(slots=True)
class Turn:
    """One request. Created by the middleware; chat fields are filled by the chat handler."""

    request_id: str
    route: str
    method: str
    headers: Mapping[str, str]
    started: float = field(default_factory=time.perf_counter)
    client: ClientKey | None = None
    # chat requests
    body: dict[str, Any] | None = None
    raw_body: bytes | None = None
    model: str | None = None
    stream: bool = False
    strategy: str | None = None
    aligned: str | None = None
    user_id: str | None = None
    preferences: tuple[str, ...] = ()
    preference_source: str | None = None
    return_draft: bool = False
    usage: dict[str, Any] | None = None
    # what the monitor needs of a sampled request (choice 0)
    judge: bool = False
    shadow: bool = False
    draft: str | None = None
    answer: str | None = None
    fallback_reason: str | None = None
    captured: bytearray | None = None
    # accounting
    upstream_wait: float = 0.0
    client_wait: float = 0.0
    first_token_at: float | None = None
    _waits: int = 0
    _wait_since: float = 0.0
    status: int | None = None
    error_code: str | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def overhead(self) -> float:
        """Seconds spent in the proxy itself: elapsed minus upstream and client waits, a wait
        still under way included (a stream's headers go out while stage 1 is running)."""
        ongoing = time.perf_counter() - self._wait_since if self._waits else 0.0
        return max(0.0, self.elapsed() - self.upstream_wait - ongoing - self.client_wait)

    async def waited(self, pieces: AsyncIterator[T]) -> AsyncIterator[T]:
        """The items of `pieces`, the wait for each counted as upstream wait (`waiting`). The
        caller still closes `pieces`."""
        while True:
            with self.waiting():
                try:
                    piece = await anext(pieces)
                except StopAsyncIteration:
                    return
            yield piece

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Count the time spent in this block as upstream wait (excluded from the overhead).
        Blocks that overlap (stage 1 and the gate, the choices of `n > 1`) count once: the wait
        is the time at least one of them was open."""
        if not self._waits:
            self._wait_since = time.perf_counter()
        self._waits += 1
        try:
            yield
        finally:
            self._waits -= 1
            if not self._waits:
                self.upstream_wait += time.perf_counter() - self._wait_since

    def forward_body(self) -> bytes:
        """The request body to send upstream: the client's bytes when nothing was taken out."""
        if self.raw_body is not None:
            return self.raw_body
        return orjson.dumps(self.body)


@dataclass(slots=True)
class Reply:
    """A complete response: status, headers, body bytes."""

    status: int
    headers: CIMultiDict[str]
    body: bytes
    content_type: str = "application/json"


@dataclass(slots=True)
class StreamReply:
    """A response sent as it is produced. `close` releases what the chunks depend on; always awaited."""

    status: int
    headers: CIMultiDict[str]
    chunks: AsyncIterator[bytes]
    close: Callable[[], Awaitable[Any]]
    content_type: str = "text/event-stream"
    sse: bool = True
    expect_done: bool = True

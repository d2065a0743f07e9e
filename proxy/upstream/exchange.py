"""One exchange with an upstream, once its headers are in: the response a pass-through reads
(`UpstreamResponse`), the completion a call of the proxy's own gets (`ChatResult`), the timing of
every call (`Timed`), and how a connection goes back to the pool (`finish`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from multidict import CIMultiDict

from ..errors import ProxyError, UpstreamStreamBroken, UpstreamTimeout
from .headers import client_response_headers
from .redact import Redactor
from .transport import transport_error

if TYPE_CHECKING:
    from .client import UpstreamClient

T = TypeVar("T")


class UpstreamResponse:
    """An upstream response whose headers are in; the body is read by `read()` or `chunks()`,
    as the upstream sent it (compressed bytes stay compressed), the upstream key redacted."""

    __slots__ = ("_deadline", "_redactor", "_timed", "_upstream", "headers", "raw", "status", "waited")

    def __init__(self, raw: aiohttp.ClientResponse, waited: float, deadline: float, upstream: str, secret: str, timed: Timed) -> None:
        self.raw = raw
        self._timed: Timed | None = timed
        self.status = raw.status
        self._redactor = Redactor(secret)
        self.headers = self._redactor.headers(raw.headers)
        self.waited = waited
        self._deadline = deadline
        self._upstream = upstream

    def close(self, error: BaseException | None = None) -> None:
        """Free the connection (`finish`) and time the call, its outcome from `error` (the
        reason the body was not read to the end, if any). Closing twice does nothing."""
        timed, self._timed = self._timed, None
        if timed is None:
            return
        try:
            finish(self.raw)
        finally:
            timed.__exit__(None if error is None else type(error), error, None)

    async def read(self) -> bytes:
        # a body already in whole (a small answer arrives with its headers) cannot keep anyone waiting
        bounded = not self.raw.content.is_eof()
        body = await self._receive(self.raw.read(), UpstreamTimeout, "while sending its body", bounded)
        return self._redactor.whole(body)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, chunk by chunk; an error mid-way raises `UpstreamStreamBroken`."""
        content = self.raw.content
        redactor = self._redactor
        loop = asyncio.get_running_loop()
        while True:
            try:
                chunk = content.read_nowait()  # what is in already: no wait, so no timer to arm
            except (aiohttp.ClientError, OSError) as error:
                raise transport_error(error, self._upstream, "mid-stream", mid_body=True) from error
            if chunk and loop.time() >= self._deadline:  # an upstream that never pauses is held to it too
                raise UpstreamStreamBroken(f"upstream {self._upstream} timed out mid-stream")
            if not chunk and not content.is_eof():
                chunk = await self._receive(content.readany(), UpstreamStreamBroken, "mid-stream")
            if not chunk:
                break
            if chunk := redactor.feed(chunk):
                yield chunk
        if tail := redactor.flush():
            yield tail

    async def _receive(self, pending: Awaitable[T], on_timeout: type[ProxyError], where: str, bounded: bool = True) -> T:
        """Await body bytes by the exchange's deadline (`bounded`); the wait counts as upstream time."""
        started = time.perf_counter()
        try:
            if not bounded:
                return await pending
            async with asyncio.timeout_at(self._deadline):
                return await pending
        except TimeoutError as error:
            raise on_timeout(f"upstream {self._upstream} timed out {where}") from error
        except (aiohttp.ClientError, OSError) as error:
            raise transport_error(error, self._upstream, where, mid_body=True) from error
        finally:
            self.waited += time.perf_counter() - started


class ChatResult:
    """A chat completion the proxy asked for: the upstream's JSON object, untouched, and (read
    only when a stage's headers are served, which stage 1's are) its headers as a client gets them."""

    __slots__ = ("_raw_headers", "data")

    def __init__(self, data: dict[str, Any], raw_headers: Mapping[str, str]) -> None:
        self.data = data
        self._raw_headers = raw_headers

    @property
    def headers(self) -> CIMultiDict[str]:
        return client_response_headers(self._raw_headers)


class Timed:
    """Times one upstream call into `perg_upstream_duration_seconds{upstream,stage,outcome}`; the
    outcome is `ok`, the error's code, or `cancelled` (the client or the proxy gave up first)."""

    __slots__ = ("_client", "_stage", "started")

    def __init__(self, client: UpstreamClient, stage: str) -> None:
        self._client = client
        self._stage = stage
        self.started = time.perf_counter()

    def __enter__(self) -> Timed:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: object) -> None:
        if error is None:
            outcome = "ok"
        elif isinstance(error, ProxyError):
            outcome = error.code or "error"
        elif isinstance(error, asyncio.CancelledError | GeneratorExit):
            outcome = "cancelled"
        else:
            outcome = "error"
        metrics = self._client._metrics
        metrics.child(metrics.upstream_duration, self._client.name, self._stage, outcome).observe(time.perf_counter() - self.started)


def finish(raw: aiohttp.ClientResponse) -> None:
    """Return a fully read connection to the pool; close one whose body was not read to the end."""
    if raw.content.at_eof():
        raw.release()
    else:
        raw.close()

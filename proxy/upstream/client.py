"""Calls to upstream OpenAI-compatible servers.

* `UpstreamClient.open()`: byte pass-through on aiohttp, for `off`, `naive` and every other
  `/v1/*` route. Bodies and streams cross untouched and chunk by chunk.
* `UpstreamClient.chat()` / `stream_chat()`: the calls the proxy makes itself (Pref-Aligner's
  stages, the relevance gate, the monitor's judges), on the lean client of `calls.py` (why: see
  there), parsed with orjson and the SSE reader of `sse.py`.

Neither uses the openai SDK: its CPU cost per call is several times these clients' (figures in
docs/benchmark.md). Only the offline benchmark uses it (`sdk.py`).

Every failure maps onto the same exceptions: status kept (`UpstreamStatusError`), unreachable 502,
timeouts 504, a stream that dies mid-way `UpstreamStreamBroken`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
import orjson
from multidict import CIMultiDict
from yarl import URL

from ..config import UpstreamSettings
from ..errors import ProxyError, UpstreamProtocolError, UpstreamStatusError, UpstreamTimeout, UpstreamUnreachable
from ..metrics import Metrics
from .calls import BadAnswer, Pool, RawAnswer
from .events import read_events
from .headers import CLIENT_REQUEST_ID, client_response_headers
from .retries import with_retries

ERROR_BODY_LIMIT = 1024 * 1024
ANSWER_LIMIT = 64 * 1024 * 1024  # a chat completion the proxy reads whole (a stage, a judge)
CHAT_PATH = "/chat/completions"
T = TypeVar("T")


class UpstreamStreamBroken(ProxyError):
    status = 502
    type = "upstream_error"
    code = "upstream_stream_broken"


class UpstreamResponse:
    """An upstream response whose headers are in; the body is read by `read()` or `chunks()`."""

    __slots__ = ("_deadline", "_upstream", "headers", "raw", "status", "waited")

    def __init__(self, raw: aiohttp.ClientResponse, waited: float, deadline: float, upstream: str) -> None:
        self.raw = raw
        self.status = raw.status
        self.headers = raw.headers
        self.waited = waited
        self._deadline = deadline
        self._upstream = upstream

    async def read(self) -> bytes:
        return await self._receive(self.raw.read(), UpstreamTimeout, "while sending its body")

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, chunk by chunk; an error mid-way raises `UpstreamStreamBroken`."""
        content = self.raw.content
        while chunk := await self._receive(content.readany(), UpstreamStreamBroken, "mid-stream"):
            yield chunk

    async def _receive(self, pending: Awaitable[T], on_timeout: type[ProxyError], where: str) -> T:
        """Await body bytes by the exchange's deadline; the wait counts as upstream time."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(self._deadline):
                return await pending
        except TimeoutError as error:
            raise on_timeout(f"upstream {self._upstream} timed out {where}") from error
        except (aiohttp.ClientError, ConnectionError) as error:
            raise UpstreamStreamBroken(f"upstream {self._upstream} broke off {where}: {_describe(error)}") from error
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


class UpstreamClient:
    """One upstream server: an aiohttp session for pass-through, a `calls.Pool` for its own calls."""

    def __init__(self, settings: UpstreamSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.name = settings.name
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self._calls: Pool | None = None

    async def start(self) -> None:
        t = self.settings.timeouts
        connector = aiohttp.TCPConnector(limit=self.settings.max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=t.connect, sock_read=t.idle),
            skip_auto_headers=("User-Agent",),
            # One session serves every client: a cookie an upstream sets (a CDN's, say) must not
            # ride along on other clients' requests. It also spares a jar lookup per call.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        fixed = {**self.settings.headers, "Content-Type": "application/json"}
        if self.settings.api_key:
            fixed["Authorization"] = f"Bearer {self.settings.api_key}"
        self._calls = Pool(self.settings.base_url, self.settings.max_connections, t.connect, fixed)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._calls is not None:
            await self._calls.close()

    def count_usage(self, model: str | None, stage: str, usage: Any) -> None:
        """Token usage reported by the upstream, by stage and type (input, output); docs/metrics.md."""
        if not isinstance(usage, dict):
            return
        metrics = self._metrics
        label = metrics.model_label(model)
        for kind, key in (("input", "prompt_tokens"), ("output", "completion_tokens")):
            value = usage.get(key)
            if isinstance(value, int) and value >= 0:
                metrics.child(metrics.tokens, label, stage, kind).inc(value)

    def url(self, path: str, query: str = "") -> URL:
        """The upstream URL for a path below its base URL, the client's encoding kept as sent."""
        return URL(self.settings.base_url + path + ("?" + query if query else ""), encoded=True)

    @asynccontextmanager
    async def open(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        data: Any = None,
        query: str = "",
        stage: str = "forward",
    ) -> AsyncIterator[UpstreamResponse]:
        """Send one request; yield once the response headers are in. Status >= 400 is raised."""
        with Timed(self, stage) as timed:
            raw: aiohttp.ClientResponse | None = None
            try:
                raw = await self._send(method, self.url(path, query), headers, data)
                deadline = asyncio.get_running_loop().time() + self.settings.timeouts.total - (time.perf_counter() - timed.started)
                yield UpstreamResponse(raw, time.perf_counter() - timed.started, deadline, self.name)
            finally:
                if raw is not None:
                    _finish(raw)

    async def _send(self, method: str, url: URL, headers: Mapping[str, str], data: Any) -> aiohttp.ClientResponse:
        replayable = data is None or isinstance(data, bytes | str)
        return await with_retries(
            functools.partial(self._attempt, method, url, headers, data), self.settings.retries, replayable=replayable
        )

    async def _attempt(self, method: str, url: URL, headers: Mapping[str, str], data: Any) -> aiohttp.ClientResponse | ProxyError:
        assert self._session is not None, "UpstreamClient.start() was not awaited"
        timeouts = self.settings.timeouts
        try:
            async with asyncio.timeout(min(timeouts.first_byte, timeouts.total)):
                raw = await self._session.request(method, url, headers=headers, data=data, allow_redirects=False)
        except TimeoutError:
            return UpstreamTimeout(f"upstream {self.name} did not answer within the timeout")
        except (aiohttp.ClientConnectionError, ConnectionError) as error:
            return UpstreamUnreachable(f"upstream {self.name} is unreachable: {_describe(error)}")
        except aiohttp.ClientError as error:
            return UpstreamProtocolError(f"upstream {self.name} sent an invalid response: {_describe(error)}")
        if raw.status < 400:
            return raw
        try:
            async with asyncio.timeout(timeouts.idle):
                payload = await raw.content.read(ERROR_BODY_LIMIT)
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            payload = b""
        finally:
            raw.close()
        return UpstreamStatusError(raw.status, payload, client_response_headers(raw.headers))

    async def chat(self, body: dict[str, Any], *, request_id: str, timeout: float, stage: str) -> ChatResult:
        """One non-streaming chat completion: the upstream's JSON object, untouched, and its
        response headers (as a client would get them). `timeout` bounds the whole call."""
        with Timed(self, stage):
            try:
                async with asyncio.timeout(timeout):
                    answer = await self._call(orjson.dumps(body), request_id)
                    try:
                        payload = await answer.read(ANSWER_LIMIT)
                    except BadAnswer as error:
                        raise UpstreamProtocolError(f"upstream {self.name} sent an invalid {stage} answer: {error}") from None
                    except OSError as error:
                        raise UpstreamStreamBroken(f"upstream {self.name} broke off while sending its body: {_describe(error)}") from None
                    finally:
                        answer.close()
            except TimeoutError:
                raise UpstreamTimeout(f"upstream {self.name} did not answer the {stage} call within {timeout:g} s") from None
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(f"upstream {self.name} answered the {stage} call with invalid JSON") from None
        if not isinstance(data, dict):
            raise UpstreamProtocolError(f"upstream {self.name} answered the {stage} call with a non-object")
        self.count_usage(body.get("model"), stage, data.get("usage"))
        return ChatResult(data, answer.headers)

    async def stream_chat(self, body: dict[str, Any], *, request_id: str, timeout: float, stage: str) -> AsyncIterator[dict[str, Any]]:
        """A streaming chat completion: chunk objects as they arrive. An in-band error event, a
        broken connection or a stream without `[DONE]` raise `UpstreamStreamBroken`."""
        with Timed(self, stage):
            deadline = asyncio.get_running_loop().time() + timeout
            try:
                async with asyncio.timeout_at(deadline):
                    answer = await self._call(orjson.dumps({**body, "stream": True}), request_id)
            except TimeoutError:
                raise UpstreamTimeout(f"upstream {self.name} did not start the {stage} stream within {timeout:g} s") from None
            try:
                async for event in read_events(
                    functools.partial(self._next_chunk, answer), deadline, self.settings.timeouts.idle, self.name
                ):
                    if event.get("usage"):
                        self.count_usage(body.get("model"), stage, event["usage"])
                    yield event
            finally:
                answer.close()

    async def _next_chunk(self, answer: RawAnswer, timeout: float) -> bytes:
        """An answer's next body bytes for `read_events`; a break raises `UpstreamStreamBroken`."""
        try:
            return await answer.next_chunk(timeout)
        except BadAnswer as error:
            raise UpstreamStreamBroken(f"upstream {self.name} sent an invalid stream: {error}") from None
        except TimeoutError:
            raise
        except OSError as error:
            raise UpstreamStreamBroken(f"upstream {self.name} broke off mid-stream: {_describe(error)}") from None

    async def _call(self, body: bytes, request_id: str) -> RawAnswer:
        """POST a chat completion, with the configured retries; returns once the headers are in.
        Status >= 400 is raised (`UpstreamStatusError`, with the upstream's body and headers)."""
        return await with_retries(functools.partial(self._call_once, body, request_id), self.settings.retries)

    async def _call_once(self, body: bytes, request_id: str) -> RawAnswer | ProxyError:
        assert self._calls is not None, "UpstreamClient.start() was not awaited"
        timeouts = self.settings.timeouts
        try:
            async with asyncio.timeout(min(timeouts.first_byte, timeouts.total)):
                answer = await self._calls.post(CHAT_PATH, body, {CLIENT_REQUEST_ID: request_id})
        except TimeoutError:
            return UpstreamTimeout(f"upstream {self.name} did not answer within the timeout")
        except BadAnswer as error:
            return UpstreamProtocolError(f"upstream {self.name} sent an invalid response: {error}")
        except OSError as error:
            return UpstreamUnreachable(f"upstream {self.name} is unreachable: {_describe(error)}")
        if answer.status < 400:
            return answer
        try:
            async with asyncio.timeout(timeouts.idle):
                payload = await answer.read(ERROR_BODY_LIMIT)
        except (TimeoutError, OSError, BadAnswer):
            payload = b""
        finally:
            answer.close()
        return UpstreamStatusError(answer.status, payload, client_response_headers(answer.headers))


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


def _finish(raw: aiohttp.ClientResponse) -> None:
    """Return a fully read connection to the pool; close one whose body was not read to the end."""
    if raw.content.at_eof():
        raw.release()
    else:
        raw.close()


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Upstreams:
    """Every configured upstream, routed by model name."""

    def __init__(self, settings: tuple[UpstreamSettings, ...], metrics: Metrics) -> None:
        self.all = [UpstreamClient(item, metrics) for item in settings]
        self._by_name = {client.name: client for client in self.all}

    async def start(self) -> None:
        for client in self.all:
            await client.start()

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.all), return_exceptions=True)

    def for_model(self, model: str) -> UpstreamClient:
        """The first upstream whose `models` patterns match `model`, else the first upstream."""
        for client in self.all:
            if client.settings.serves(model):
                return client
        return self.all[0]

    def named(self, name: str) -> UpstreamClient:
        return self._by_name[name]

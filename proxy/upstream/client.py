"""Calls to upstream OpenAI-compatible servers, all on one aiohttp session per upstream
(`transport.py`: the connector, TLS, proxies, header bounds, the failure map).

* `UpstreamClient.send()` (and `open()`, its context manager): byte pass-through, for `off`, `naive` and every other `/v1/*` route.
  Bodies and streams cross untouched and chunk by chunk; a compressed answer stays compressed.
* `UpstreamClient.chat()` / `stream_chat()`: the calls the proxy makes itself (Pref-Aligner's
  stages, the relevance gate, the monitor's judges, canary, shadow, `eval`), gzip accepted and
  decoded, read whole (bounded by the decoded size) or as events (`events.py`).

Every failure maps onto the same exceptions: status kept (`UpstreamStatusError`; an error body that
is not an OpenAI error object is never relayed, and logged, truncated, with `logging.log_content`),
unreachable 502, timeouts 504, a redirect or a status outside 100–599 a 502 naming it, a stream
that dies mid-way `UpstreamStreamBroken`. The one retry policy is `retries.py`. The upstream's key is redacted from
anything relayed (`redact.py`).
"""

from __future__ import annotations

import asyncio
import functools
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
import orjson
import structlog
from yarl import URL

from .. import telemetry
from ..config import Retries, StructuredOutput, UpstreamSettings
from ..errors import ProxyError, UpstreamProtocolError, UpstreamStatusError, UpstreamTimeout
from ..metrics import Metrics
from .adapt import ChatDialect
from .events import read_events
from .exchange import ChatResult, Timed, UpstreamResponse, finish
from .headers import CLIENT_REQUEST_ID, client_response_headers
from .redact import Redactor
from .retries import with_retries
from .transport import env_proxy, open_session, transport_error

ERROR_BODY_LIMIT = 1024 * 1024
LOGGED_BODY_LIMIT = 2000  # of an upstream error body that is not relayed (not an OpenAI error)
ANSWER_LIMIT = 64 * 1024 * 1024  # a chat completion the proxy reads whole (a stage, a judge), decoded
CHAT_PATH = "/chat/completions"
T = TypeVar("T")
log = structlog.get_logger("perg.upstream")


class UpstreamClient:
    """One upstream server: one aiohttp session (one connector) for every call made to it.

    `sharing(metrics)` gives a client on the same session that counts into other metrics (the
    monitor's): the connection limit still counts every call of the process."""

    def __init__(
        self, settings: UpstreamSettings, metrics: Metrics, parent: UpstreamClient | None = None, *, log_bodies: bool = False
    ) -> None:
        self.settings = settings
        self.log_bodies: bool = parent.log_bodies if parent is not None else log_bodies  # logging.log_content
        self.name = settings.name
        self._metrics = metrics
        self._own_session: aiohttp.ClientSession | None = None
        self._parent = parent
        base, _, self._base_query = settings.base_url.partition("?")
        self._base = base
        self._chat_url = self.url(CHAT_PATH)
        self._secret = settings.api_key
        fixed = {**settings.headers, "Content-Type": "application/json", "Accept-Encoding": "gzip, deflate"}
        if settings.api_key:
            fixed["Authorization"] = f"Bearer {settings.api_key}"
        self._call_headers = fixed
        self._proxy, self._proxy_auth = env_proxy(settings)
        self._dialect = ChatDialect(settings.structured_output, settings.max_tokens_parameter)
        # native | via_chat: configured, else found by `responses_probe` (None until then)
        self.responses_api: str | None = settings.responses_api
        self.responses_probing = asyncio.Lock()

    @property
    def dialect(self) -> ChatDialect:
        """What this upstream accepts of a client's chat request (`adapt.py`): its settings, the
        JSON style replaced by the one the start-up probe found working when it found a mismatch."""
        return self._parent.dialect if self._parent is not None else self._dialect

    def adopt_json_style(self, style: StructuredOutput) -> None:
        if self._parent is not None:
            self._parent.adopt_json_style(style)
        else:
            self._dialect = ChatDialect(style, self._dialect.max_tokens_parameter)

    async def start(self) -> None:
        if self._parent is None:
            self._own_session = open_session(self.settings)

    async def close(self) -> None:
        if self._own_session is not None:
            await self._own_session.close()
            self._own_session = None

    def sharing(self, metrics: Metrics) -> UpstreamClient:
        return UpstreamClient(self.settings, metrics, parent=self)

    @property
    def _session(self) -> aiohttp.ClientSession:
        session = self._parent._session if self._parent is not None else self._own_session
        assert session is not None, "UpstreamClient.start() was not awaited"
        return session

    def count_usage(self, model: str | None, stage: str, usage: Any) -> None:
        """Token usage reported by the upstream, by stage and type (input, output); docs/metrics.md."""
        if not isinstance(usage, dict):
            return
        metrics = self._metrics
        label = metrics.model_label(model)
        for kind, key, other in (("input", "prompt_tokens", "input_tokens"), ("output", "completion_tokens", "output_tokens")):
            value = usage.get(key, usage.get(other))  # chat's names, else the Responses API's
            if isinstance(value, int) and value >= 0:
                metrics.child(metrics.tokens, label, stage, kind).inc(value)

    def url(self, path: str, query: str = "") -> URL:
        """The upstream URL for a path below its base URL, the client's encoding kept as sent; the
        base URL's own query (`?api-version=…`) comes first on every call."""
        joined = f"{self._base_query}&{query}" if self._base_query and query else (self._base_query or query)
        return URL(self._base + path + ("?" + joined if joined else ""), encoded=True)

    async def send(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        data: Any = None,
        query: str = "",
        stage: str = "forward",
    ) -> UpstreamResponse:
        """Send one request; the response once its headers are in (status >= 400 is raised). The
        caller reads its body and always calls `close()`, which times the call and frees its slot."""
        timed = Timed(self, stage)
        url = self.url(path, query)
        try:
            if self.settings.retries.max_attempts == 1:
                raw = await self._attempt(method, url, headers, data, False)
            else:
                replayable = data is None or isinstance(data, bytes | str)
                attempt = functools.partial(self._attempt, method, url, headers, data, False)
                raw = await with_retries(attempt, self.settings.retries, method=method, replayable=replayable)
        except BaseException as error:
            timed.__exit__(type(error), error, None)
            raise
        waited = time.perf_counter() - timed.started
        deadline = asyncio.get_running_loop().time() + self.settings.timeouts.total - waited
        return UpstreamResponse(raw, waited, deadline, self.name, self._secret, timed)

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
        """`send()` as a context manager: the response within the block, closed after it."""
        response = await self.send(method, path, headers=headers, data=data, query=query, stage=stage)
        try:
            yield response
        except BaseException as error:
            response.close(error)
            raise
        response.close()

    async def _attempt(self, method: str, url: URL, headers: Mapping[str, str], data: Any, decode: bool) -> aiohttp.ClientResponse:
        """One request, by the first-byte timeout; the response once its headers are in. Anything
        but a 1xx/2xx answer is raised (`_refuse`)."""
        timeouts = self.settings.timeouts
        try:
            async with asyncio.timeout(min(timeouts.first_byte, timeouts.total)):
                raw = await self._session.request(
                    method,
                    url,
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    auto_decompress=decode,
                    proxy=self._proxy,
                    proxy_auth=self._proxy_auth,
                )
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.name} did not answer within the timeout") from None
        except (aiohttp.ClientError, OSError) as error:
            raise transport_error(error, self.name) from None
        if 100 <= raw.status < 300:
            return raw
        raise await self._refuse(raw, decode)

    async def _refuse(self, raw: aiohttp.ClientResponse, decoded: bool) -> ProxyError:
        """The error for a 3xx, a 4xx/5xx (with its body, decoded and bounded) or a status outside
        100–599; the connection is closed. The upstream's key is redacted from what is kept."""
        status = raw.status
        if status < 100 or status > 599:
            raw.close()
            return UpstreamProtocolError(f"upstream {self.name} answered with HTTP status {status}, outside 100–599")
        if status < 400:
            raw.close()
            return UpstreamProtocolError(
                f"upstream {self.name} answered with a redirect (HTTP {status}), which the proxy does not follow; "
                "check the upstream's base_url",
                code="upstream_redirect",
            )
        try:
            async with asyncio.timeout(self.settings.timeouts.idle):
                payload = await raw.content.read(ERROR_BODY_LIMIT)
        except (TimeoutError, aiohttp.ClientError, OSError):
            payload = b""
        finally:
            raw.close()
        if not decoded:
            payload = _decoded(payload, raw.headers.get("Content-Encoding", ""))
        redactor = Redactor(self._secret)
        error = UpstreamStatusError(status, redactor.whole(payload), client_response_headers(redactor.headers(raw.headers)))
        if error.unrelayed_body is not None:  # the client gets a short message; the body is for the operator
            unrelayed = error.unrelayed_body
            # the body itself only with logging.log_content: an upstream may echo message text in it
            text = unrelayed[:LOGGED_BODY_LIMIT].decode("utf-8", "replace") if self.log_bodies else None
            log.warning(
                "upstream_error_body", upstream=self.name, status=status, content_type=raw.headers.get("Content-Type"),
                size=len(unrelayed), message=error.message, body=text,
            )  # fmt: skip
        return error

    def _post_attempt(self, body: bytes, request_id: str, path: str = CHAT_PATH) -> Callable[[], Awaitable[aiohttp.ClientResponse]]:
        headers = telemetry.outgoing({**self._call_headers, CLIENT_REQUEST_ID: request_id})
        url = self._chat_url if path == CHAT_PATH else self.url(path)
        return functools.partial(self._attempt, "POST", url, headers, body, True)

    async def chat(
        self,
        body: dict[str, Any],
        *,
        request_id: str,
        timeout: float,
        stage: str,
        retries: Retries | None = None,
        path: str = CHAT_PATH,
    ) -> ChatResult:
        """One non-streaming chat completion (or another JSON call, `path` /responses say): the
        upstream's JSON object, untouched, and its response headers (as a client would get them).
        `timeout` bounds each attempt, body included; attempts follow the upstream's retry policy
        (or `retries`)."""
        with telemetry.upstream_call(self.name, self.settings.base_url, stage, body, path=path) as traced, traced.current():
            attempt = self._post_attempt(orjson.dumps(body), request_id, path)
            with Timed(self, stage):
                payload, headers = await with_retries(
                    functools.partial(self._chat_once, attempt, timeout, stage), retries or self.settings.retries
                )
            traced.response_body(payload)
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(f"upstream {self.name} answered the {stage} call with invalid JSON") from None
        if not isinstance(data, dict):
            raise UpstreamProtocolError(f"upstream {self.name} answered the {stage} call with a non-object")
        self.count_usage(body.get("model"), stage, data.get("usage"))
        return ChatResult(data, Redactor(self._secret).headers(headers))

    async def _chat_once(
        self, attempt: Callable[[], Awaitable[aiohttp.ClientResponse]], timeout: float, stage: str
    ) -> tuple[bytes, Mapping[str, str]]:
        try:
            async with asyncio.timeout(timeout):
                raw = await attempt()
                try:
                    return await self._read_whole(raw, stage), raw.headers
                finally:
                    finish(raw)
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.name} did not answer the {stage} call within {timeout:g} s") from None

    async def _read_whole(self, raw: aiohttp.ClientResponse, stage: str) -> bytes:
        """A body read whole, at most `ANSWER_LIMIT` decoded bytes; silence is bounded by
        `timeouts.idle` (the session's read timeout)."""
        parts: list[bytes] = []
        size = 0
        try:
            while chunk := await raw.content.readany():
                size += len(chunk)
                if size > ANSWER_LIMIT:
                    raise UpstreamProtocolError(f"upstream {self.name}'s {stage} answer is larger than {ANSWER_LIMIT} bytes")
                parts.append(chunk)
        except TimeoutError:
            idle = self.settings.timeouts.idle
            raise UpstreamTimeout(f"upstream {self.name} sent nothing for {idle:g} s of its {stage} answer") from None
        except (aiohttp.ClientError, OSError) as error:
            raise transport_error(error, self.name, "while sending its body", mid_body=True) from None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def stream_chat(self, body: dict[str, Any], *, request_id: str, timeout: float, stage: str) -> AsyncIterator[dict[str, Any]]:
        """A streaming chat completion: chunk objects as they arrive. An in-band error event, a
        broken connection or a stream without `[DONE]` raise `UpstreamStreamBroken`."""
        with Timed(self, stage), telemetry.upstream_call(self.name, self.settings.base_url, stage, body) as traced:
            deadline = asyncio.get_running_loop().time() + timeout
            try:
                async with asyncio.timeout_at(deadline):
                    with traced.current():
                        attempt = self._post_attempt(orjson.dumps({**body, "stream": True}), request_id)
                        raw = await with_retries(attempt, self.settings.retries)
            except TimeoutError:
                raise UpstreamTimeout(f"upstream {self.name} did not start the {stage} stream within {timeout:g} s") from None
            try:
                next_chunk = functools.partial(self._next_chunk, raw, Redactor(self._secret))
                async for event in read_events(next_chunk, deadline, self.settings.timeouts.idle, self.name):
                    if event.get("usage"):
                        self.count_usage(body.get("model"), stage, event["usage"])
                    traced.chunk(event)
                    yield event
            finally:
                finish(raw)

    async def _next_chunk(self, raw: aiohttp.ClientResponse, redactor: Redactor, timeout: float) -> bytes:
        """A stream's next body bytes for `read_events`; a break raises `UpstreamStreamBroken`."""
        try:
            async with asyncio.timeout(timeout):
                chunk = await raw.content.readany()
        except TimeoutError:
            raise
        except (aiohttp.ClientError, OSError) as error:
            raise transport_error(error, self.name, "mid-stream", mid_body=True) from None
        return redactor.feed(chunk) if chunk else redactor.flush()


def _decoded(payload: bytes, coding: str) -> bytes:
    """An error body the upstream compressed, inflated to at most `ERROR_BODY_LIMIT` bytes (as
    sent when it is not gzip or deflate, or is corrupt)."""
    if coding.strip().lower() not in ("gzip", "x-gzip", "deflate"):
        return payload
    try:
        return zlib.decompressobj(zlib.MAX_WBITS | 32).decompress(payload, ERROR_BODY_LIMIT)
    except zlib.error:
        return payload


class Upstreams:
    """Every configured upstream, routed by model name."""

    def __init__(
        self,
        settings: tuple[UpstreamSettings, ...],
        metrics: Metrics,
        clients: list[UpstreamClient] | None = None,
        *,
        log_bodies: bool = False,
    ) -> None:
        self.all = clients if clients is not None else [UpstreamClient(item, metrics, log_bodies=log_bodies) for item in settings]
        self._by_name = {client.name: client for client in self.all}

    def sharing(self, metrics: Metrics) -> Upstreams:
        """The same upstreams on the same sessions (one connection limit), counted into `metrics`."""
        clients = [client.sharing(metrics) for client in self.all]
        return Upstreams(tuple(client.settings for client in clients), metrics, clients)

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

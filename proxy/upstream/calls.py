"""A lean HTTP/1.1 client for the calls the proxy makes itself: Pref-Aligner's stages, the
relevance gate and the monitor's judges. Each is a JSON POST whose answer the proxy reads, whole
or as an event stream. The clients' own traffic (pass-through) stays on aiohttp (`upstream.py`).

Why these calls do not use aiohttp: they run one after the other on the request path (stage 1,
then stage 2), and aiohttp's per-call cost spent much of Pref-Aligner's latency budget where this
client's is near zero (`bench/pref_aligner.py` prints both; figures in docs/benchmark.md). It does
only what these calls need:

* POST with a bytes body; keep-alive connections pooled per upstream, at most `limit` in use;
  one `write` per request; http, and https with certificates verified (the default context);
* answers parsed by httptools (llhttp, the parser of Node.js and uvicorn): Content-Length,
  chunked, or until the connection closes; gzip and deflate bodies decoded;
* a kept-alive connection the server closed while it was idle is replaced and the request sent
  again, once, and only when not a byte of an answer came back on it (as aiohttp and urllib3 do);
* an answer is read whole (`read`) or as it arrives (`chunks`, with back-pressure); a connection
  goes back to the pool only after a complete answer, so a call cancelled mid-way never leaves a
  half-read connection for the next one.

Errors: `OSError` (`ConnectionError`) when the server cannot be reached or the connection breaks,
`BadAnswer` when what came back is not HTTP this client can read. Timeouts are the caller's.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from urllib.parse import quote, urlsplit

import httptools
from multidict import CIMultiDict

KEEPALIVE_SECONDS = 15.0  # an idle connection older than this is not reused (aiohttp's default)
PAUSE_BYTES = 256 * 1024  # stop reading from the socket while this much is buffered unread
MAX_BUFFERED = 64 * 1024 * 1024  # unread body bytes held at most (decompressed), else BadAnswer
_FORBIDDEN = ("\r", "\n", "\0")


class BadAnswer(Exception):
    """The server's reply is not an HTTP/1.1 answer this client can read."""


class StaleConnection(ConnectionError):
    """A reused connection closed before any byte of an answer: safe to send again."""


class RawAnswer:
    """One response: status and headers once `Pool.post` returns, then the body."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_complete",
        "_connection",
        "_decoder",
        "_error",
        "_released",
        "_streaming",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(self, connection: Connection) -> None:
        self.status = 0
        self.headers: CIMultiDict[str] = CIMultiDict()
        self._connection = connection
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: zlib._Decompress | None = None
        self._released = False
        self._streaming = False  # read chunk by chunk: reading from the socket pauses while much is unread

    async def read(self, limit: int) -> bytes:
        """The whole body (at most `limit` bytes, else `BadAnswer`)."""
        while not self._complete:
            if self._error is not None:
                raise self._error
            if self._buffered > limit:
                self.close()
                raise BadAnswer(f"the answer is larger than {limit} bytes")
            await self._wait()
        if self._error is not None:
            raise self._error
        self._release()
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if len(body) > limit:
            raise BadAnswer(f"the answer is larger than {limit} bytes")
        return body

    async def next_chunk(self, timeout: float) -> bytes:
        """What arrived of the body since the last call (b"" at its end); `TimeoutError` when
        nothing arrives within `timeout` seconds."""
        self._streaming = True
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._complete:
                self._release()
                return b""
            async with asyncio.timeout(timeout):
                await self._wait()
        chunk = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self._resume()
        return chunk

    async def chunks(self, idle: float) -> AsyncIterator[bytes]:
        """The body as it arrives; `TimeoutError` when nothing arrives for `idle` seconds."""
        while chunk := await self.next_chunk(idle):
            yield chunk

    def close(self) -> None:
        """Done with this answer: an unfinished one takes its connection down with it."""
        if not self._complete:
            self._connection.abort()
        self._release()

    # --- fed by the connection ---

    def _feed(self, data: bytes) -> None:
        room = MAX_BUFFERED - self._buffered
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data, room + 1)  # bounded: no zip bomb
            except zlib.error as error:
                self._fail(BadAnswer(f"the answer's compressed body is corrupt: {error}"))
                return
            if not data:
                return
        if len(data) > room:
            self._fail(BadAnswer(f"the answer holds more than {MAX_BUFFERED} unread bytes"))
            self._connection.abort()
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._streaming and self._buffered > PAUSE_BYTES:
            self._connection.pause()
        self._wake()

    def _finish(self) -> None:
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
                self._buffered += len(tail)
        self._complete = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self._complete:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _resume(self) -> None:
        if self._buffered <= PAUSE_BYTES // 2:
            self._connection.resume()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._connection.pool._exchange_ended(self._connection, reusable=self._complete and self._error is None)


class Connection(asyncio.Protocol):
    """One kept-alive connection; at most one answer in flight (no pipelining)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.exchanges = 0
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._answer: RawAnswer | None = None
        self._headers_done: asyncio.Future[None] | None = None
        self._started = False  # a byte of the current answer has come back
        self._until_close = False
        self._keep_alive = True
        self._paused = False
        self._informational = False
        self._header_list: list[tuple[str, str]] = []

    def send(self, request: bytes) -> tuple[RawAnswer, asyncio.Future[None]]:
        answer = self._answer = RawAnswer(self)
        self._headers_done = asyncio.get_running_loop().create_future()
        self._started = False
        self._until_close = False
        self._header_list = []
        assert self.transport is not None
        self.transport.write(request)
        return answer, self._headers_done

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._answer is None:  # bytes nobody asked for: this connection cannot be trusted
            self.abort()
            return
        self._started = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._broken(BadAnswer(f"the answer is not valid HTTP/1.1: {error}"))
            self.abort()

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost ends an answer read until close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        answer = self._answer
        if answer is None:
            return
        headers_done = self._headers_done is not None and self._headers_done.done()
        if headers_done and self._until_close and exc is None:
            self._answer = None
            answer._finish()
            return
        if not self._started and self.exchanges > 0:
            error: BaseException = StaleConnection("the kept-alive connection was closed by the server")
        else:
            reason = f": {exc}" if exc else ""
            error = ConnectionError(f"the connection closed before the answer ended{reason}")
        self._broken(error)

    # --- httptools callbacks ---

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        answer = self._answer
        assert answer is not None
        status = self._parser.get_status_code()
        self._informational = status < 200  # 1xx (103 Early Hints, say): the answer follows it
        if self._informational:
            self._header_list = []
            return
        answer.status = status
        answer.headers = headers = CIMultiDict(self._header_list)
        self._keep_alive = self._parser.should_keep_alive()
        chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self._until_close = "Content-Length" not in headers and not chunked and answer.status not in (204, 304)
        coding = headers.get("Content-Encoding", "identity").strip().lower()
        if coding in ("gzip", "x-gzip", "deflate"):
            answer._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib, by its header
        elif coding not in ("", "identity"):
            self._broken(BadAnswer(f"the answer is encoded as {coding!r}, which this client cannot decode"))
            self.abort()
            return
        if self._headers_done is not None and not self._headers_done.done():
            self._headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._answer is not None:
            self._answer._feed(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        answer, self._answer = self._answer, None
        self.exchanges += 1
        if not self._keep_alive:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        if answer is not None:
            answer._finish()

    def _broken(self, error: BaseException) -> None:
        answer, self._answer = self._answer, None
        waiter = self._headers_done
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if answer is not None:
            answer._fail(error)


class Pool:
    """Connections to one server (`base_url`), and the POST calls made over them."""

    def __init__(
        self, base_url: str, limit: int, connect_timeout: float, headers: Mapping[str, str], ssl_context: ssl.SSLContext | None = None
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self._prefix = quote(parts.path.rstrip("/"), safe="/%!$&'()*+,;=:@-._~")  # as sent on the request line
        self._connect_timeout = connect_timeout
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[Connection] = []
        self._all: set[Connection] = set()
        lines = {"Host": parts.netloc.rpartition("@")[2], "Accept-Encoding": "gzip, deflate", **headers}
        self._head = "".join(f"{_clean(k)}: {_clean(v)}\r\n" for k, v in lines.items()).encode("latin-1")

    async def post(self, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> RawAnswer:
        """Send `body` to `path` (below the base URL); return once the answer's headers are in."""
        extra = "".join(f"{_clean(k)}: {_clean(v)}\r\n" for k, v in (headers or {}).items()).encode("latin-1")
        request = b"".join(
            (
                b"POST ",
                (self._prefix + path).encode("ascii"),
                b" HTTP/1.1\r\n",
                self._head,
                extra,
                b"Content-Length: %d\r\n\r\n" % len(body),
                body,
            )
        )
        await self._slots.acquire()
        connection: Connection | None = None
        try:
            while True:
                connection = self._take_idle() or await self._connect()
                answer, headers_done = connection.send(request)
                try:
                    await headers_done
                except StaleConnection:
                    self._forget(connection)
                    continue  # only a reused connection can be stale: in the end a fresh one is tried
                return answer  # the answer holds the slot and the connection from here on
        except BaseException:
            if connection is not None:
                self._forget(connection)  # mid-exchange: nobody can read this connection again
            self._slots.release()
            raise

    async def close(self) -> None:
        for connection in list(self._all):
            connection.abort()
        self._all.clear()
        self._idle.clear()

    def _take_idle(self) -> Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            transport = connection.transport
            if (
                not connection.closed
                and transport is not None
                and not transport.is_closing()
                and now - connection.idle_since < KEEPALIVE_SECONDS
            ):
                return connection
            self._forget(connection)
        return None

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            _, connection = await loop.create_connection(lambda: Connection(self), self._host, self._port, ssl=self._ssl)
        self._all.add(connection)
        return connection

    def _forget(self, connection: Connection) -> None:
        self._all.discard(connection)
        if not connection.closed:
            connection.abort()

    def _exchange_ended(self, connection: Connection, reusable: bool) -> None:
        """An answer is done with (read, or closed early): free its slot, keep or drop its connection."""
        self._slots.release()
        if reusable and not connection.closed and connection._answer is None:
            connection.resume()  # a stream left unread at its end may have paused reading
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            self._forget(connection)


def _clean(text: str) -> str:
    """A header name or value as sent: one that could break the request's framing is refused."""
    if any(char in text for char in _FORBIDDEN):
        raise ValueError(f"a header contains a line break or NUL: {text[:40]!r}")
    return text

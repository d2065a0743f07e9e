"""The lean client of the proxy's own calls (`proxy/calls.py`), against scripted raw servers on
127.0.0.1: keep-alive, stale connections, body framings, bad answers, cancellation, limits, TLS."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from proxy.upstream.calls import PAUSE_BYTES, BadAnswer, Pool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """A raw TCP server; `handler` scripts each connection. Counts connections and requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_now -= 1
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return body


def reply(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
    while (body := await server.read_request(reader)) is not None:
        writer.write(reply(b"echo:" + body))
        await writer.drain()


def pool(server: Server, limit: int = 8) -> Pool:
    return Pool(f"http://127.0.0.1:{server.port}/v1", limit, 5.0, {"Authorization": "Bearer sk-up"})


@asynccontextmanager
async def serving(handler: Handler, limit: int = 8) -> AsyncIterator[tuple[Server, Pool]]:
    """A scripted server and a pool on it; both closed at the end."""
    async with Server(handler) as server:
        p = pool(server, limit)
        try:
            yield server, p
        finally:
            await p.close()


async def call(p: Pool, body: bytes = b"{}") -> bytes:
    answer = await p.post("/chat/completions", body, {"X-Client-Request-Id": "abc"})
    try:
        return await answer.read(1 << 20)
    finally:
        answer.close()


async def test_requests_are_framed_and_one_connection_is_kept_alive():
    async with serving(echo_forever) as (server, p):
        for index in range(5):
            assert await call(p, b'{"n": %d}' % index) == b'echo:{"n": %d}' % index
    assert server.connections == 1
    head = server.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}".encode() in head
    assert b"Authorization: Bearer sk-up" in head and b"X-Client-Request-Id: abc" in head
    assert b"Content-Length: 8" in head


async def test_a_base_path_outside_ascii_is_sent_percent_encoded():
    async with Server(echo_forever) as server:
        p = Pool(f"http://127.0.0.1:{server.port}/my models/é%41", 2, 5.0, {})
        try:
            answer = await p.post("/chat/completions", b"{}")
            assert await answer.read(100) == b"echo:{}"
            answer.close()
        finally:
            await p.close()
    assert server.requests[0].startswith(b"POST /my%20models/%C3%A9%41/chat/completions HTTP/1.1\r\n")


async def test_a_kept_alive_connection_the_server_dropped_is_replaced_once():
    async def drop_second(reader, writer, server):
        body = await server.read_request(reader)
        if server.connections == 1:
            writer.write(reply(b"first:" + body))
            await writer.drain()
            await server.read_request(reader)  # the next request arrives ... and is dropped unanswered
            return
        while body is not None:
            writer.write(reply(b"fresh:" + body))
            await writer.drain()
            body = await server.read_request(reader)

    async with serving(drop_second) as (server, p):
        assert await call(p, b"1") == b"first:1"
        assert await call(p, b"2") == b"fresh:2"
    assert server.connections == 2


async def test_a_fresh_connection_closed_without_an_answer_is_an_error_not_a_retry():
    async def hang_up(reader, writer, server):
        await server.read_request(reader)

    async with serving(hang_up) as (server, p):
        with pytest.raises(ConnectionError):
            await call(p)
    assert server.connections == 1


GZIPPED = gzip.compress(b'{"zipped": true}')
DEFLATED = zlib.compress(b'{"deflated": true}')


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n', b'{"a": 1}'),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", b"until the end"),
        (b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + reply(b"after hints"), b"after hints"),
        (reply(GZIPPED, "Content-Encoding: gzip"), b'{"zipped": true}'),
        (reply(DEFLATED, "Content-Encoding: deflate"), b'{"deflated": true}'),
        (reply(b"", status="200 OK"), b""),
    ],
    ids=["chunked", "until-close", "103-first", "gzip", "deflate", "empty"],
)
async def test_body_framings_and_encodings(raw, expected):
    async def answer(reader, writer, server):
        await server.read_request(reader)
        writer.write(raw)
        await writer.drain()

    async with serving(answer) as (_server, p):
        assert await call(p) == expected


async def test_connection_close_is_honoured():
    async def close_each(reader, writer, server):
        await server.read_request(reader)
        writer.write(reply(b"ok", "Connection: close"))
        await writer.drain()
        await asyncio.sleep(0.2)  # the client must not wait for this close to send its next call

    async with serving(close_each) as (server, p):
        assert await call(p) == b"ok"
        assert await call(p) == b"ok"
    assert server.connections == 2


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", "not valid HTTP"),
        (reply(b"xx", "Content-Encoding: br"), "cannot decode"),
        (reply(b"not gzip at all", "Content-Encoding: gzip"), "corrupt"),
    ],
    ids=["garbage", "unknown-encoding", "corrupt-gzip"],
)
async def test_answers_that_cannot_be_read_are_bad_answers(raw, message):
    async def answer(reader, writer, server):
        await server.read_request(reader)
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(0.5)

    async with serving(answer, limit=1) as (_server, p):
        with pytest.raises(BadAnswer, match=message):
            await call(p)


async def test_an_answer_over_the_limit_is_refused():
    async def big(reader, writer, server):
        await server.read_request(reader)
        writer.write(reply(b"x" * 5000))
        await writer.drain()

    async with serving(big) as (_server, p):
        answer = await p.post("/chat/completions", b"{}")
        with pytest.raises(BadAnswer, match="larger than 1000"):
            await answer.read(1000)
        answer.close()


async def test_a_compressed_answer_that_would_inflate_past_the_limit_is_refused(monkeypatch):
    import proxy.upstream.calls

    monkeypatch.setattr(proxy.upstream.calls, "MAX_BUFFERED", 1 << 20)
    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB of zeros in about 64 KiB

    async def answer(reader, writer, server):
        await server.read_request(reader)
        writer.write(reply(bomb, "Content-Encoding: gzip"))
        await writer.drain()

    async with serving(answer) as (_server, p):
        with pytest.raises(BadAnswer, match="more than 1048576 unread bytes"):
            await call(p)


async def test_header_that_could_split_the_request_is_refused_and_frees_nothing():
    async with serving(echo_forever, limit=1) as (_server, p):
        with pytest.raises(ValueError, match="line break"):
            await p.post("/chat/completions", b"{}", {"X-Client-Request-Id": "a\r\nEvil: 1"})
        assert await call(p) == b"echo:{}"  # the one slot is still free
    with pytest.raises(ValueError, match="line break"):
        Pool("http://127.0.0.1:1", 1, 1.0, {"X-Key": "v\nw"})


async def test_a_call_cancelled_mid_body_leaves_no_half_read_connection_behind():
    async def half_then_echo(reader, writer, server):
        body = await server.read_request(reader)
        if server.connections == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
            await writer.drain()
            await asyncio.sleep(5)
            return
        while body is not None:
            writer.write(reply(b"echo:" + body))
            await writer.drain()
            body = await server.read_request(reader)

    async with serving(half_then_echo, limit=1) as (server, p):
        answer = await p.post("/chat/completions", b"first")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await answer.read(1 << 20)
        answer.close()
        async with asyncio.timeout(2):
            assert await call(p, b"second") == b"echo:second"  # new connection, own answer
    assert server.connections == 2


async def test_a_call_cancelled_before_its_headers_frees_its_slot():
    async def slow(reader, writer, server):
        await server.read_request(reader)
        await asyncio.sleep(5)

    async with serving(slow, limit=1) as (server, p):
        for _ in range(3):  # a leaked slot would block the second round forever
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await p.post("/chat/completions", b"{}")
    assert server.connections == 3


async def test_the_limit_bounds_connections_in_use():
    async def slow_echo(reader, writer, server):
        while (body := await server.read_request(reader)) is not None:
            await asyncio.sleep(0.1)
            writer.write(reply(b"echo:" + body))
            await writer.drain()

    async with serving(slow_echo, limit=2) as (server, p):
        results = await asyncio.gather(*(call(p, str(i).encode()) for i in range(6)))
    assert results == [f"echo:{i}".encode() for i in range(6)]
    assert server.most_open == 2 and server.connections == 2


async def test_a_stream_is_read_as_it_arrives_with_back_pressure():
    total = 3 * 1024 * 1024

    async def stream(reader, writer, server):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"e" * 65536
        for _ in range(total // len(piece)):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with serving(stream) as (_server, p):
        answer = await p.post("/chat/completions", b"{}")
        received, most_buffered = 0, 0
        async for chunk in answer.chunks(idle=5):
            received += len(chunk)
            most_buffered = max(most_buffered, len(chunk))  # all that was buffered
            await asyncio.sleep(0.001)  # a slow reader
        answer.close()
    assert received == total
    assert most_buffered <= PAUSE_BYTES + 256 * 1024  # one socket read past the pause mark at most


async def test_a_connection_paused_for_back_pressure_is_resumed_before_reuse():
    async with serving(echo_forever, limit=1) as (server, p):
        answer = await p.post("/chat/completions", b"first")
        assert await answer.next_chunk(5) == b"echo:first"
        answer._connection.pause()  # as when the answer's last bytes pushed it past the mark
        answer.close()
        async with asyncio.timeout(2):  # a paused connection in the pool would hang here
            assert await call(p, b"again") == b"echo:again"
    assert server.connections == 1


async def test_a_silent_stream_times_out_by_its_idle_limit():
    async def stall(reader, writer, server):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async with serving(stall) as (_server, p):
        answer = await p.post("/chat/completions", b"{}")
        chunks = []
        with pytest.raises(TimeoutError):
            async for chunk in answer.chunks(idle=0.2):
                chunks.append(chunk)
        answer.close()
    assert chunks == [b"hello"]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


async def test_https_with_a_verified_certificate(certificate):
    key, cert = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = await asyncio.start_server(lambda r, w: _tls_echo(r, w), "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        trusted = Pool(f"https://127.0.0.1:{port}/v1", 2, 5.0, {}, ssl_context=ssl.create_default_context(cafile=str(cert)))
        try:
            answer = await trusted.post("/chat/completions", b"secret")
            assert await answer.read(1000) == b"tls:secret"
            answer.close()
        finally:
            await trusted.close()
        untrusted = Pool(f"https://127.0.0.1:{port}/v1", 2, 5.0, {})  # the system's CAs: refused
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await untrusted.post("/chat/completions", b"secret")
        finally:
            await untrusted.close()
    finally:
        server.close()
        await server.wait_closed()


async def _tls_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        writer.write(reply(b"tls:" + await reader.readexactly(length)))
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        writer.close()

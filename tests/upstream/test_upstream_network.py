"""What real networks need, on every upstream path: verified TLS with a CA bundle and a client
certificate per upstream, HTTP(S)_PROXY / NO_PROXY (a forward proxy on loopback) unless
`trust_env` is off, Happy Eyeballs, userinfo refused at start, one connection limit per upstream
per process that counts everything."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path

import aiohttp.abc
import pproxy
import pytest
import trustme

from proxy.config import ConfigError, load_settings
from proxy.errors import UpstreamConnectFailed, UpstreamUnreachable
from proxy.metrics import private_metrics
from proxy.upstream.client import Upstreams
from proxy.upstream.transport import HAPPY_EYEBALLS_DELAY, open_session
from tests.upstream.scripted import ALL_PATHS, Caller, Request, ScriptedServer, answer, completion, pass_through, settings_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=ALL_PATHS)
def path(request: pytest.FixtureRequest) -> str:
    return request.param


async def ok(request: Request, writer: asyncio.StreamWriter) -> bool:
    writer.write(answer(completion()))
    return True


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
    return context


def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


async def test_tls_is_verified_against_the_upstreams_ca_bundle(path, ca, tmp_path):
    server = await ScriptedServer(ok, ssl_context=server_context(ca)).start()
    try:
        async with Caller(path, settings_for(server.url, ca_bundle=ca_file(ca, tmp_path))) as call:
            assert b"ok" in await call()
        async with Caller(path, settings_for(server.url)) as call:  # the system's CAs do not know this one
            error = await call.error()
        assert isinstance(error, UpstreamUnreachable) and "certificate" in error.message.lower(), error
    finally:
        await server.stop()


async def test_a_client_certificate_is_presented_when_configured(ca, tmp_path):
    server = await ScriptedServer(ok, ssl_context=server_context(ca, require_client_cert=True)).start()
    identity = tmp_path / "client.pem"
    ca.issue_cert("perg-proxy@example.com").private_key_and_cert_chain_pem.write_to_path(str(identity))
    try:
        async with Caller("stage", settings_for(server.url, ca_bundle=ca_file(ca, tmp_path), client_cert=identity)) as call:
            assert b"ok" in await call()
        async with Caller("stage", settings_for(server.url, ca_bundle=ca_file(ca, tmp_path))) as call:
            error = await call.error()
        assert error.status == 502, error
    finally:
        await server.stop()


class ForwardProxy:
    """pproxy's HTTP forward proxy (CONNECT included) on loopback, in this event loop."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.port = 0

    async def __aenter__(self) -> ForwardProxy:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._handler = await pproxy.Server(f"http://127.0.0.1:{self.port}").start_server({"rserver": [], "verbose": self.seen.append})
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._handler.close()
        await self._handler.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


async def test_https_proxy_from_the_environment_carries_tls_calls(path, ca, tmp_path, no_proxy_env):
    server = await ScriptedServer(ok, ssl_context=server_context(ca)).start()
    try:
        async with ForwardProxy() as forward:
            no_proxy_env.setenv("HTTPS_PROXY", forward.url)
            async with Caller(path, settings_for(server.url, ca_bundle=ca_file(ca, tmp_path))) as call:
                assert b"ok" in await call()
        assert any(f"127.0.0.1:{server.port}" in line for line in forward.seen), forward.seen
    finally:
        await server.stop()


async def test_http_proxy_no_proxy_and_trust_env_off(path, no_proxy_env):
    server = await ScriptedServer(ok).start()
    try:
        with socket.socket() as probe:  # a port nobody listens on: a proxy that is down
            probe.bind(("127.0.0.1", 0))
            dead = probe.getsockname()[1]
        no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead}")
        async with Caller(path, settings_for(server.url)) as call:
            error = await call.error()
        assert isinstance(error, UpstreamConnectFailed), error  # the proxy was used, and is down
        assert server.requests == []
        async with Caller(path, settings_for(server.url, trust_env=False)) as call:
            assert b"ok" in await call()
        no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
        async with Caller(path, settings_for(server.url)) as call:
            assert b"ok" in await call()
        async with ForwardProxy() as forward:
            no_proxy_env.delenv("NO_PROXY")
            no_proxy_env.setenv("HTTP_PROXY", forward.url)
            async with Caller(path, settings_for(server.url)) as call:
                assert b"ok" in await call()
        assert forward.seen
    finally:
        await server.stop()


def test_userinfo_in_a_base_url_is_refused_at_start_naming_the_key(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("upstreams:\n  - name: u\n    base_url: https://user:secret@api.example.com/v1\n")
    with pytest.raises(ConfigError, match=r"upstreams\.0\.base_url") as raised:
        load_settings(config)
    assert "secret" not in str(raised.value) or "user or password" in str(raised.value)


async def test_happy_eyeballs_moves_on_from_an_address_that_does_not_answer():
    """Two addresses for one name: the first is a listener whose accept queue is full (SYNs are
    dropped: a black hole, on loopback), the second answers. The connection is made after the
    Happy Eyeballs delay, not after the connect timeout."""
    server = await ScriptedServer(ok).start()
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    fillers = []
    try:
        for _ in range(8):  # fill the accept queue; later SYNs go unanswered
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(hole.getsockname())
            fillers.append(filler)
        await asyncio.sleep(0.1)

        class TwoAddresses(aiohttp.abc.AbstractResolver):
            async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, object]]:
                entry = {"hostname": host, "proto": 0, "flags": socket.AI_NUMERICHOST, "family": socket.AF_INET}
                return [{**entry, "host": "127.0.0.1", "port": hole.getsockname()[1]}, {**entry, "host": "127.0.0.1", "port": server.port}]

            async def close(self) -> None:
                pass

        settings = settings_for(
            f"http://upstream.test:{server.port}/v1", timeouts={"connect": 10, "first_byte": 10, "idle": 10, "total": 10}
        )
        session = open_session(settings, resolver=TwoAddresses())
        try:
            started = time.monotonic()
            async with session.post(f"http://upstream.test:{server.port}/v1/chat/completions", data=b"{}") as response:
                assert response.status == 200
            assert HAPPY_EYEBALLS_DELAY <= time.monotonic() - started < 3
        finally:
            await session.close()
    finally:
        for filler in fillers:
            filler.close()
        hole.close()
        await server.stop()


async def test_one_connection_limit_counts_every_call_of_the_process():
    """The monitor's clients share the app's sessions: with max_connections 1, a pass-through call
    in flight holds the only connection and a judge call on the monitor's clients waits for it."""
    release, arrived = asyncio.Event(), asyncio.Event()

    async def script(request: Request, writer: asyncio.StreamWriter) -> bool:
        if len(server.requests) == 1:
            arrived.set()
            await release.wait()
        writer.write(answer(completion()))
        return True

    server = await ScriptedServer(script).start()
    app = Upstreams((settings_for(server.url, max_connections=1),), private_metrics())
    await app.start()
    monitor = app.sharing(private_metrics())
    try:
        forwarded = asyncio.create_task(pass_through(app.all[0], {"model": "m"}))
        await arrived.wait()
        judge = asyncio.create_task(monitor.all[0].chat({"model": "m"}, request_id="j", timeout=5, stage="judge"))
        await asyncio.sleep(0.3)
        assert not judge.done() and len(server.requests) == 1  # waiting for the one connection
        release.set()
        await forwarded
        await judge
        assert server.connections == 1 and len(server.requests) == 2
    finally:
        await app.close()
        await server.stop()


@pytest.mark.parametrize(
    ("upstream", "message"),
    [
        ("  - name: u\n    base_url: http://127.0.0.1:1/v1\n    client_key: key.pem\n", "client_key is set without client_cert"),
        ("  - name: u\n    base_url: http://127.0.0.1:1/v1#frag\n", "fragment"),
        ("  - name: u\n    base_url: http://127.0.0.1:1/v1\n    trust_env: maybe\n", "trust_env"),
    ],
)
def test_network_settings_are_checked_at_start(tmp_path, upstream, message):
    config = tmp_path / "config.yaml"
    config.write_text("upstreams:\n" + upstream)
    with pytest.raises(ConfigError, match=message):
        load_settings(config)

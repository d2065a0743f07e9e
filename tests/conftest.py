"""Shared fixtures: servers on 127.0.0.1 in background threads, the fake upstream, the local model."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.config import Settings, parse_settings
from proxy.server.app import create_app
from proxy.server.connections import listen, make_runner
from proxy.server.services import SERVICES
from tests.fake_upstream import FakeUpstream

# The profile-store fixtures (every backend; PostgreSQL with PERG_TEST_POSTGRES_DSN).
pytest_plugins = ("tests.store_fixtures",)

ROOT = Path(__file__).resolve().parent.parent
# Files this project may read but must not ship (the paper's published results carry no licence):
# PERG_SHARED_DATA, else the `shared/data` folder beside the project root.
SHARED_DATA = Path(os.environ.get("PERG_SHARED_DATA") or ROOT.parent / "shared" / "data")
CLIENT_KEY = "sk-client-1"
ADMIN_KEY = "admin-secret"
UPSTREAM_KEY = "sk-upstream-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    """An aiohttp application served on 127.0.0.1 from its own thread and event loop."""

    def __init__(
        self, app: web.Application, runner_factory: Callable[[web.Application], web.AppRunner] | None = None, port: int = 0
    ) -> None:
        self.app = app
        self._wanted_port = port
        self._runner_factory = runner_factory or (lambda a: web.AppRunner(a, access_log=None, handler_cancellation=True))
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        runner = self._runner_factory(self.app)
        listener = None
        try:
            await runner.setup()
            if SERVICES in self.app:  # the proxy: its own listener, with its connection limits
                listener = await listen(runner, host="127.0.0.1", port=self._wanted_port)
                self.port = listener.sockets[0].getsockname()[1]
            else:
                await web.TCPSite(runner, "127.0.0.1", self._wanted_port).start()
                self.port = runner.addresses[0][1]
        except BaseException as error:  # noqa: BLE001 - surfaced to the starting thread
            self._error = error
            self._ready.set()
            await runner.cleanup()
            return
        self._ready.set()
        await self._stop.wait()
        if listener is not None:
            listener.close()
        await runner.cleanup()

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)


def proxy_settings(upstream_url: str, **sections: Any) -> Settings:
    """The issue's minimal configuration pointed at `upstream_url`, with sections overridden."""
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "upstreams": [{"name": "main", "base_url": upstream_url, "api_key": UPSTREAM_KEY}],
        "personalization": {"default_strategy": "off"},
        "auth": {"client_keys": [CLIENT_KEY], "admin_key": ADMIN_KEY},
        "profiles": {"backend": "memory"},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return parse_settings(data)


class RunningProxy:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.server = ServerThread(create_app(settings, self.registry), make_runner).start()
        self.url = self.server.url
        self.base_url = self.url + "/v1"

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream()
    server = ServerThread(upstream.app()).start()
    upstream.url = server.url + "/v1"  # type: ignore[attr-defined]
    upstream.server = server  # type: ignore[attr-defined]
    yield upstream
    server.stop()


@pytest.fixture
def fake_upstream(fake: FakeUpstream) -> FakeUpstream:
    fake.clear()
    fake.scripts.clear()
    return fake


@pytest.fixture
def start_proxy(fake_upstream: FakeUpstream) -> Iterator[Callable[..., RunningProxy]]:
    started: list[RunningProxy] = []

    def start(upstream_url: str | None = None, **sections: Any) -> RunningProxy:
        proxy = RunningProxy(proxy_settings(upstream_url or fake_upstream.url, **sections))  # type: ignore[attr-defined]
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def proxy(start_proxy: Callable[..., RunningProxy]) -> RunningProxy:
    return start_proxy()


@pytest.fixture(scope="session")
def local_model() -> Iterator[Any]:
    """The real SmolLM2 model behind llama_cpp.server, started once and stopped by its PID."""
    from proxy.local_model import LocalModelError, LocalModelProcess

    process = LocalModelProcess("127.0.0.1", free_port(), log_path=ROOT / ".perg" / "test-local-model.log")
    (ROOT / ".perg").mkdir(exist_ok=True)
    try:
        process.start(ready_timeout=180)
    except LocalModelError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"the real local model is not available here: {error}")
    yield process
    process.stop()


def shared_file(*parts: str) -> Path:
    """A file of the shared data folder; the test is skipped, saying where it looked, when it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set PERG_SHARED_DATA to the folder that holds paper/)")
    return path


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy (bounded by `timeout` seconds)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)

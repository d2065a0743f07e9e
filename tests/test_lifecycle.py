"""Real processes and real signals: graceful shutdown mid-stream, --workers, two replicas."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
import uuid

import asyncpg
import httpx2
import pytest

from tests.conftest import ADMIN_KEY, CLIENT_KEY, free_port, wait_for
from tests.processes import Proxy, write_config

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
POSTGRES_DSN = os.environ.get("PERG_TEST_POSTGRES_DSN")


@pytest.fixture
def processes():
    started: list[Proxy] = []
    yield started
    for proxy in started:
        proxy.stop()


def stream_in_thread(url: str, model: str, result: dict) -> threading.Thread:
    def run() -> None:
        try:
            body = {"model": model, "messages": [{"role": "user", "content": "a stream that takes a while"}], "stream": True}
            with httpx2.stream("POST", url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30) as response:
                result["status"] = response.status_code
                result["body"] = b"".join(response.iter_bytes())
        except httpx2.HTTPError as error:
            result["error"] = repr(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_sigterm_mid_stream_drains_gracefully(tmp_path, fake_upstream, processes):
    port = free_port()
    proxy = Proxy(write_config(tmp_path, port, fake_upstream.url), port)
    processes.append(proxy)
    result: dict = {}
    thread = stream_in_thread(proxy.url, "drip-600", result)  # ~3 s of chunks
    time.sleep(0.5)
    proxy.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    ready = httpx2.get(proxy.url + "/readyz", timeout=5)  # still listening: the pre-stop delay
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert httpx2.get(proxy.url + "/healthz").status_code == 200
    late = httpx2.post(
        proxy.url + "/v1/chat/completions", json={"model": "echo", "messages": [{"role": "user", "content": "late"}]}, headers=AUTH
    )
    assert late.status_code == 200  # new requests are still served during the pre-stop delay
    time.sleep(1.2)
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(proxy.url + "/healthz", timeout=2)  # past the pre-stop delay: no longer accepting
    thread.join(30)
    assert result.get("status") == 200, result
    assert result["body"].endswith(b"data: [DONE]\n\n") and b"event: error" not in result["body"]
    assert proxy.process.wait(30) == 0
    names = [event["event"] for event in proxy.events()]
    assert names.index("draining") < names.index("shutting_down") < names.index("stopped")


def test_stream_longer_than_the_grace_period_is_cut_not_completed(tmp_path, fake_upstream, processes):
    port = free_port()
    config = (
        write_config(tmp_path, port, fake_upstream.url)
        .read_text()
        .replace("pre_stop_seconds: 1.0, grace_seconds: 10", "pre_stop_seconds: 0, grace_seconds: 1")
    )
    (tmp_path / "short.yaml").write_text(config)
    proxy = Proxy(tmp_path / "short.yaml", port)
    processes.append(proxy)
    result: dict = {}
    thread = stream_in_thread(proxy.url, "drip-2000", result)  # ~10 s of chunks
    time.sleep(0.5)
    started = time.monotonic()
    proxy.process.send_signal(signal.SIGTERM)
    assert proxy.process.wait(30) == 0
    assert time.monotonic() - started < 5
    thread.join(30)
    assert not result.get("body", b"").endswith(b"data: [DONE]\n\n")  # never a clean end


def test_workers_share_the_port_and_metrics_add_up(tmp_path, fake_upstream, processes):
    port = free_port()
    proxy = Proxy(write_config(tmp_path, port, fake_upstream.url, "profiles: {backend: memory}"), port, "--workers", "2")
    processes.append(proxy)
    # Ready means one worker answered; on a loaded machine the other may bind a moment later.
    assert wait_for(lambda: sum(event.get("event") == "listening" for event in proxy.events()) == 2, timeout=30)

    async def load() -> list[int]:
        async with httpx2.AsyncClient(timeout=30, limits=httpx2.Limits(max_keepalive_connections=0)) as client:
            body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
            responses = await asyncio.gather(
                *(client.post(proxy.url + "/v1/chat/completions", json=body, headers=AUTH) for _ in range(120))
            )
        return [r.status_code for r in responses]

    assert asyncio.run(load()) == [200] * 120

    def handled() -> float:
        text = httpx2.get(proxy.url + "/metrics", headers={"Connection": "close"}).text
        line = next(
            line for line in text.splitlines() if line.startswith('perg_requests_total{method="POST",route="chat_completions",status="200"')
        )
        return float(line.rsplit(" ", 1)[1])

    # A request is counted just after its response went to the transport (off the response's
    # path, middleware._record): on a loaded machine the last ones may not be counted yet.
    assert wait_for(lambda: handled() == 120.0, timeout=10)
    assert {handled() for _ in range(6)} == {120.0}, "each scrape may land on either worker: each reports the sum"
    assert proxy.stop() == 0
    pids = {event["pid"] for event in proxy.events() if event.get("event") == "request"}
    assert len(pids) == 2, pids
    assert all(not _alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_replicas_share_one_postgres_profile_store(tmp_path, fake_upstream, processes):
    if not POSTGRES_DSN:
        pytest.skip("two replicas on PostgreSQL need PERG_TEST_POSTGRES_DSN (set by .ci/run)")
    schema = f"perg_replicas_{uuid.uuid4().hex[:10]}"
    store = f"profiles: {{backend: postgres, dsn: '{POSTGRES_DSN}', schema_name: {schema}}}"
    replicas = []
    for name in ("a", "b"):
        port = free_port()
        replicas.append(Proxy(write_config(tmp_path, port, fake_upstream.url, store, f"{name}.yaml"), port))
    processes.extend(replicas)

    async def patch_all() -> list[int]:
        async with httpx2.AsyncClient(timeout=60) as client:
            calls = [
                client.patch(f"{replicas[i % 2].url}/perg/profiles/shared", json={"add": [f"preference {i}"]}, headers=ADMIN)
                for i in range(30)
            ]
            return [r.status_code for r in await asyncio.gather(*calls)]

    try:
        assert asyncio.run(patch_all()) == [200] * 30
        for replica in replicas:  # both replicas see every preference
            texts = [p["text"] for p in httpx2.get(f"{replica.url}/perg/profiles/shared", headers=ADMIN).json()["preferences"]]
            assert sorted(texts) == sorted(f"preference {i}" for i in range(30))
    finally:
        for replica in replicas:
            replica.stop()
        asyncio.run(_drop(schema))


async def _drop(schema: str) -> None:
    connection = await asyncpg.connect(POSTGRES_DSN)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


def test_listen_backlog_is_configurable(tmp_path, fake_upstream, processes):
    import shutil

    if shutil.which("ss") is None:
        pytest.skip("reading a socket's backlog needs `ss` (iproute2)")
    port = free_port()
    config = write_config(tmp_path, port, fake_upstream.url).read_text().replace("grace_seconds: 10}", "grace_seconds: 10, backlog: 777}")
    (tmp_path / "backlog.yaml").write_text(config)
    processes.append(Proxy(tmp_path / "backlog.yaml", port))
    listing = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout.split()
    assert listing[2] == "777"  # a listening socket's Send-Q is its accept backlog

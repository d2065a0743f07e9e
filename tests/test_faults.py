"""Faults, one test each, on the scripted fake upstream (the rest live beside the feature they
hit: broken, stalled and unfinished streams and slow headers in test_api.py, a hanging judge in
test_monitor.py, a store that is down in test_profiles_api.py, disk-full and locked SQLite at
the store level in test_store_failures_sqlite.py)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time

import httpx2
import pytest

from tests.conftest import ADMIN_KEY, CLIENT_KEY, ServerThread, free_port, wait_for
from tests.fake_upstream import FakeUpstream, error_response
from tests.processes import Proxy, write_config

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
BODY = {"model": "echo", "messages": [{"role": "user", "content": "are you there"}]}


def test_upstream_down_at_start_then_back(start_proxy):
    port = free_port()
    proxy = start_proxy(f"http://127.0.0.1:{port}/v1")
    assert httpx2.post(f"{proxy.base_url}/chat/completions", json=BODY, headers=AUTH).status_code == 502
    assert httpx2.get(proxy.url + "/readyz").status_code == 503
    server = ServerThread(FakeUpstream().app(), port=port).start()  # the upstream comes up
    try:
        assert wait_for(lambda: httpx2.get(proxy.url + "/readyz").status_code == 200)
        response = httpx2.post(f"{proxy.base_url}/chat/completions", json=BODY, headers=AUTH)
        assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "are you there"
    finally:
        server.stop()


def test_retries_are_off_by_default(proxy, fake_upstream):
    response = httpx2.post(f"{proxy.base_url}/chat/completions", json={**BODY, "model": "flaky-1"}, headers=AUTH)
    assert response.status_code == 503
    assert len(fake_upstream.received) == 1


def test_configured_retries_are_bounded_and_honour_retry_after(start_proxy, fake_upstream):
    retries = {"max_attempts": 3, "backoff_seconds": 0.01, "max_backoff_seconds": 2}
    proxy = start_proxy(upstreams=[{"name": "main", "base_url": fake_upstream.url, "retries": retries}])
    recovered = httpx2.post(f"{proxy.base_url}/chat/completions", json={**BODY, "model": "flaky-2"}, headers=AUTH)
    assert recovered.status_code == 200 and len(fake_upstream.received) == 3
    fake_upstream.clear()
    exhausted = httpx2.post(f"{proxy.base_url}/chat/completions", json={**BODY, "model": "flaky-5"}, headers=AUTH)
    assert exhausted.status_code == 503 and len(fake_upstream.received) == 3  # bounded
    fake_upstream.clear()
    started = time.monotonic()
    too_long = httpx2.post(f"{proxy.base_url}/chat/completions", json={**BODY, "model": "error-429"}, headers=AUTH)
    # retry-after: 7 is longer than max_backoff_seconds: not waited for, the client gets the 429 now
    assert too_long.status_code == 429 and too_long.headers["retry-after"] == "7"
    assert len(fake_upstream.received) == 1 and time.monotonic() - started < 1.5


def test_retry_waits_for_the_upstreams_retry_after(start_proxy, fake_upstream):
    calls = []

    def once_429(body):
        calls.append(time.monotonic())
        if len(calls) == 1:
            return error_response("429", retry_after="1")
        return "ok"

    fake_upstream.scripts["once"] = once_429
    retries = {"max_attempts": 2, "backoff_seconds": 0.01, "max_backoff_seconds": 5}
    proxy = start_proxy(upstreams=[{"name": "main", "base_url": fake_upstream.url, "retries": retries}])
    response = httpx2.post(f"{proxy.base_url}/chat/completions", json={**BODY, "model": "script:once"}, headers=AUTH)
    assert response.status_code == 200
    assert calls[1] - calls[0] >= 0.95  # the upstream's retry-after, not the 10 ms backoff


def test_429_storm_passes_through_quickly(proxy, fake_upstream):
    async def storm() -> list[httpx2.Response]:
        async with httpx2.AsyncClient(timeout=10) as client:
            return await asyncio.gather(
                *(client.post(f"{proxy.base_url}/chat/completions", json={**BODY, "model": "error-429"}, headers=AUTH) for _ in range(100))
            )

    started = time.monotonic()
    responses = asyncio.run(storm())
    assert {r.status_code for r in responses} == {429}
    assert {r.headers["retry-after"] for r in responses} == {"7"}
    assert time.monotonic() - started < 10
    assert httpx2.post(f"{proxy.base_url}/chat/completions", json=BODY, headers=AUTH).status_code == 200


def test_locked_sqlite_file_answers_503_and_keeps_serving(start_proxy, fake_upstream, tmp_path):
    path = tmp_path / "profiles.db"
    proxy = start_proxy(
        profiles={"backend": "sqlite", "path": str(path), "busy_timeout_seconds": 0.3}, personalization={"default_strategy": "naive"}
    )
    assert httpx2.put(f"{proxy.url}/perg/profiles/alice", json={"preferences": ["Be brief."]}, headers=ADMIN).status_code == 200
    holder = sqlite3.connect(path, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        blocked = httpx2.put(f"{proxy.url}/perg/profiles/alice", json={"preferences": ["Changed."]}, headers=ADMIN, timeout=10)
        assert blocked.status_code == 503 and blocked.json()["error"]["code"] == "store_unavailable"
        chat = httpx2.post(f"{proxy.base_url}/chat/completions", json={**BODY, "user": "alice"}, headers=AUTH, timeout=10)
        assert chat.status_code == 200  # answered, with or without the stored preferences
    finally:
        holder.rollback()
        holder.close()
    profile = httpx2.get(f"{proxy.url}/perg/profiles/alice", headers=ADMIN).json()
    assert [p["text"] for p in profile["preferences"]] == ["Be brief."]  # the refused write changed nothing


def test_acknowledged_profile_writes_survive_a_crash(tmp_path, fake_upstream):
    port = free_port()
    store = f"profiles: {{backend: sqlite, path: '{tmp_path / 'profiles.db'}'}}"
    config = write_config(tmp_path, port, fake_upstream.url, store)
    first = Proxy(config, port)
    try:
        for i in range(20):
            response = httpx2.patch(f"{first.url}/perg/profiles/bob", json={"add": [f"preference {i}"]}, headers=ADMIN)
            assert response.status_code == 200
    finally:
        first.process.send_signal(signal.SIGKILL)  # no graceful anything
        first.process.wait(10)
        first.out.close()
    second = Proxy(config, port)
    try:
        texts = [p["text"] for p in httpx2.get(f"{second.url}/perg/profiles/bob", headers=ADMIN).json()["preferences"]]
        assert texts == [f"preference {i}" for i in range(20)]
    finally:
        assert second.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_both_stop_signals_exit_cleanly(tmp_path, fake_upstream, signum):
    port = free_port()
    proxy = Proxy(write_config(tmp_path, port, fake_upstream.url), port)
    proxy.process.send_signal(signum)
    assert proxy.process.wait(30) == 0
    proxy.out.close()

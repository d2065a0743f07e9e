"""The shared monitor queue on a real Redis (`monitor.queue: redis`): proxies publish, separate
`perg-proxy monitor-worker` processes judge. Two proxies and two workers share one stream; a worker
SIGKILLed mid-job has the job claimed and judged exactly once; a poison job ends in the dead-letter
stream; a Redis that is down drops and counts samples while every request is served.

Needs PERG_TEST_REDIS_URL (the tests use its server's db 3, and a stream of their own per test);
skipped with the reason without it, but for the Redis-down test, which needs no Redis. Every
process started here is stopped by its PID; the judges are the scripted fake upstream."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2
import orjson
import pytest

from proxy.preferences.models import JudgedSample
from proxy.preferences.sqlite import SqliteStore
from tests.conftest import CLIENT_KEY, free_port, wait_for
from tests.fake_upstream import FakeUpstream, pipeline_role
from tests.processes import Proxy, write_config

REDIS_URL = os.environ.get("PERG_TEST_REDIS_URL")
STYLE = "Answer in the style of a pirate."


def redis_db3(url: str) -> str:
    """The same server, db 3 (this issue's own database on a shared Redis)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/3", parts.query, parts.fragment))


needs_redis = pytest.mark.skipif(REDIS_URL is None, reason="Redis queue tests need PERG_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/0)")


@pytest.fixture
def stream() -> Iterator[str]:
    """A stream name of this test's own, deleted (with its dead letters) afterwards."""
    name = f"perg:test:{uuid.uuid4().hex[:12]}"
    yield name
    if REDIS_URL is not None:
        import redis

        client = redis.from_url(redis_db3(REDIS_URL))
        client.delete(name, f"{name}:dead")
        client.close()


def redis_sync() -> Any:
    import redis

    assert REDIS_URL is not None
    return redis.from_url(redis_db3(REDIS_URL))


def monitor_yaml(tmp_path: Path, stream: str, redis_url: str | None = None, **monitor: Any) -> str:
    settings = {
        "enabled": True,
        "sample_rate": 1.0,
        "store_samples": True,
        "queue": "redis",
        "redis_url": redis_url or redis_db3(REDIS_URL or "redis://127.0.0.1:6379/3"),
        "stream": stream,
        "workers": 1,
        "claim_after_seconds": 1.0,
        "max_deliveries": 2,
        "drain_seconds": 2,
        "judge": {"model": "script:judge", "max_retries": 0, "timeout_seconds": 30},
        "worker": {"reclaim_interval_seconds": 0.2, "block_seconds": 0.2},
        **monitor,
    }
    profiles = {"backend": "sqlite", "path": str(tmp_path / "shared.db")}
    return f"profiles: {orjson.dumps(profiles).decode()}\nmonitor: {orjson.dumps(settings).decode()}\nlogging: {{level: info}}\n"


class Worker:
    """`perg-proxy monitor-worker` as a child process, stopped by its own PID."""

    def __init__(self, config: Path, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = config.parent / f"{name}.log"
        self.out = self.log.open("wb")
        command = [sys.executable, "-m", "proxy", "monitor-worker", "--config", str(config), "--port", str(self.port)]
        self.process = subprocess.Popen(command, stdout=self.out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                ready = httpx2.get(self.url + "/readyz", timeout=1)
                if ready.status_code == 200:
                    self.consumer = ready.json()["consumer"]
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the worker did not become ready: {self.log.read_text()}")

    def metric(self, name: str, labels: str = "") -> float:
        text = httpx2.get(self.url + "/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(name + (labels and "{" + labels + "}") + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.out.close()
        return self.process.returncode


def proxy_metric(proxy: Proxy, name: str, labels: str = "") -> float:
    text = httpx2.get(proxy.url + "/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{" if not labels else name + "{" + labels) or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def chat(proxy: Proxy, request_id: str) -> httpx2.Response:
    body = {
        "model": "echo",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "personalization": {"preferences": [STYLE]},
    }
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "X-Request-ID": request_id}
    return httpx2.post(f"{proxy.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def stored(tmp_path: Path) -> list[JudgedSample]:
    async def read() -> list[JudgedSample]:
        store = SqliteStore(tmp_path / "shared.db")
        await store.open()
        try:
            found: list[JudgedSample] = []
            after = None
            while True:
                page, more = await store.list_samples(limit=200, after=after)
                found += page
                if not more:
                    return found
                after = page[-1].id
        finally:
            await store.close()

    return asyncio.run(read())


def judge_script(delay: float = 0.0):  # type: ignore[no-untyped-def]
    """Scripted judges: relevant, consistent, follow score 4, each after `delay` seconds."""

    async def reply(body: dict[str, Any]) -> str:
        if delay:
            await asyncio.sleep(delay)
        role = pipeline_role(body)
        if role == "judge_consistency":
            return '{"reason": "r", "verdict": "consistent"}'
        if role == "judge_follow":
            return '{"reason": "r", "score": 4}'
        return '{"reason": "r", "relevant": true}'

    return reply


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for process in reversed(started):
        process.stop()


@needs_redis
def test_two_proxies_and_two_workers_share_one_stream(tmp_path, fake_upstream: FakeUpstream, stream, processes):
    fake_upstream.scripts["judge"] = judge_script(delay=0.05)
    extra = monitor_yaml(tmp_path, stream)
    upstream = fake_upstream.url  # type: ignore[attr-defined]
    proxies = [
        Proxy(write_config(tmp_path, port, upstream, extra, name=f"proxy{i}.yaml"), port)
        for i, port in enumerate((free_port(), free_port()))
    ]
    processes.extend(proxies)
    config = write_config(tmp_path, 0, upstream, extra, name="worker.yaml")
    workers = [Worker(config, f"worker{i}") for i in range(2)]
    processes.extend(workers)
    ids = [f"shared-{i}-{uuid.uuid4().hex[:6]}" for i in range(24)]
    for index, request_id in enumerate(ids):
        assert chat(proxies[index % 2], request_id).status_code == 200
    assert wait_for(lambda: len([s for s in stored(tmp_path) if s.role == "served"]) >= len(ids), timeout=60)
    samples = [s for s in stored(tmp_path) if s.role == "served"]
    assert sorted(s.request_id for s in samples) == sorted(ids)  # each job judged exactly once
    assert len({s.fingerprint for s in samples}) == 1 and samples[0].fingerprint
    done = [worker.metric("perg_monitor_worker_jobs_total", 'outcome="acknowledged"') for worker in workers]
    assert sum(done) == len(ids) and all(count > 0 for count in done), done  # both workers took a share
    judged = sum(
        worker.metric("perg_monitor_judged_total", 'model="echo",relevance="relevant",role="served",strategy="off"') for worker in workers
    )
    assert judged == len(ids)
    assert sum(proxy_metric(proxy, "perg_monitor_published_total") for proxy in proxies) == len(ids)
    assert all(proxy_metric(proxy, "perg_monitor_judged_total") == 0 for proxy in proxies)  # no judging in the serving processes
    assert wait_for(lambda: workers[0].metric("perg_monitor_stream_length") == 0 and workers[0].metric("perg_monitor_stream_pending") == 0)


@needs_redis
def test_a_worker_killed_mid_job_loses_nothing_and_counts_once(tmp_path, fake_upstream: FakeUpstream, stream, processes):
    held: list[str] = []

    async def judge(body: dict[str, Any]) -> str:
        if not held:  # the first judge call of the job hangs: its worker is killed meanwhile
            held.append(pipeline_role(body))
            await asyncio.sleep(60)
        return await judge_script()(body)

    fake_upstream.scripts["judge"] = judge
    extra = monitor_yaml(tmp_path, stream)
    upstream = fake_upstream.url  # type: ignore[attr-defined]
    port = free_port()
    proxy = Proxy(write_config(tmp_path, port, upstream, extra, name="proxy.yaml"), port)
    processes.append(proxy)
    config = write_config(tmp_path, 0, upstream, extra, name="worker.yaml")
    workers = {worker.consumer: worker for worker in (Worker(config, "worker-a"), Worker(config, "worker-b"))}
    processes.extend(workers.values())
    assert chat(proxy, "killed-1").status_code == 200
    assert wait_for(lambda: held, timeout=20)
    client = redis_sync()
    try:
        [pending] = client.xpending_range(stream, "perg-judges", "-", "+", 10)
        holder = workers[pending["consumer"].decode()]
        holder.process.send_signal(signal.SIGKILL)  # mid-job: judged, nothing stored, nothing acknowledged
        holder.process.wait(10)
        [survivor] = [worker for worker in workers.values() if worker is not holder]
        assert wait_for(lambda: [s for s in stored(tmp_path) if s.request_id == "killed-1"], timeout=30)
        time.sleep(1.5)  # past another claim_after_seconds: a second judging would show now
        samples = [s for s in stored(tmp_path) if s.request_id == "killed-1"]
        assert [s.role for s in samples] == ["served"]
        assert survivor.metric("perg_monitor_claimed_total") >= 1
        assert survivor.metric("perg_monitor_judged_total", 'model="echo",relevance="relevant",role="served",strategy="off"') == 1
        assert client.xlen(stream) == 0 and client.xpending(stream, "perg-judges")["pending"] == 0
    finally:
        client.close()


@needs_redis
def test_a_poison_job_ends_in_the_dead_letter_stream(tmp_path, fake_upstream: FakeUpstream, stream, processes):
    fake_upstream.scripts["judge"] = judge_script()
    config = write_config(tmp_path, 0, fake_upstream.url, monitor_yaml(tmp_path, stream, claim_after_seconds=0.3), name="worker.yaml")  # type: ignore[attr-defined]
    worker = Worker(config, "worker")
    processes.append(worker)
    client = redis_sync()
    try:
        poison = client.xadd(stream, {"job": b"{not json"})
        assert wait_for(lambda: client.xlen(f"{stream}:dead") == 1, timeout=20)
        [(_, letter)] = client.xrange(f"{stream}:dead")
        assert letter[b"entry"] == poison and letter[b"job"] == b"{not json"
        assert int(letter[b"deliveries"]) == 3  # max_deliveries 2: the third delivery is not attempted
        assert client.xlen(stream) == 0 and client.xpending(stream, "perg-judges")["pending"] == 0
        assert worker.metric("perg_monitor_dead_lettered_total") == 1
        assert worker.metric("perg_monitor_worker_jobs_total", 'outcome="failed"') == 2
        assert worker.metric("perg_monitor_dead_letter_length") == 1
    finally:
        client.close()


def test_redis_down_drops_and_counts_and_every_request_is_served(tmp_path, fake_upstream: FakeUpstream, processes):
    dead = f"redis://127.0.0.1:{free_port()}/3"  # nothing listens there
    extra = monitor_yaml(tmp_path, "perg:test:down", redis_url=dead)
    port = free_port()
    proxy = Proxy(write_config(tmp_path, port, fake_upstream.url, extra, name="proxy.yaml"), port)  # type: ignore[attr-defined]
    processes.append(proxy)
    slowest = 0.0
    for index in range(20):
        started = time.perf_counter()
        assert chat(proxy, f"down-{index}").status_code == 200
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 1.0, slowest  # the request never waits on Redis
    assert wait_for(lambda: proxy_metric(proxy, "perg_monitor_dropped_total", 'reason="redis_unavailable"') == 20, timeout=10)
    assert proxy_metric(proxy, "perg_monitor_published_total") == 0
    assert httpx2.get(proxy.url + "/readyz", timeout=5).status_code == 200  # the judges' queue is not the request path


@needs_redis
def test_a_job_delivered_twice_is_stored_and_counted_once(tmp_path, fake_upstream: FakeUpstream, stream, processes):
    """The same job twice on the stream (as when a worker stored its verdicts and died before
    acknowledging): one sample, counted once; the stream ends empty."""
    from proxy.monitor.job import Job
    from proxy.monitor.queue import encode_job

    fake_upstream.scripts["judge"] = judge_script()
    config = write_config(tmp_path, 0, fake_upstream.url, monitor_yaml(tmp_path, stream), name="worker.yaml")  # type: ignore[attr-defined]
    worker = Worker(config, "worker")
    processes.append(worker)
    job = Job(
        request_id="twice-1", user_id=None, model="echo", strategy="off", body={"model": "echo"}, query="What is the capital of France?",
        preferences=(STYLE,), answer="Paris.", reference="Paris.", judge_served=True, shadow=False,
    )  # fmt: skip
    client = redis_sync()
    try:
        client.xadd(stream, {"job": encode_job(job)})
        assert wait_for(lambda: [s for s in stored(tmp_path) if s.request_id == "twice-1"], timeout=20)
        client.xadd(stream, {"job": encode_job(job)})
        assert wait_for(lambda: worker.metric("perg_monitor_worker_jobs_total", 'outcome="acknowledged"') == 2, timeout=20)
        assert len([s for s in stored(tmp_path) if s.request_id == "twice-1"]) == 1
        assert worker.metric("perg_monitor_judged_total", 'model="echo",relevance="relevant",role="served",strategy="off"') == 1
        assert client.xlen(stream) == 0
    finally:
        client.close()


@needs_redis
def test_a_worker_drains_on_sigterm(tmp_path, fake_upstream: FakeUpstream, stream, processes):
    """SIGTERM mid-job: /readyz fails, the job in progress finishes and is stored, exit 0."""
    fake_upstream.scripts["judge"] = judge_script(delay=0.5)
    extra = monitor_yaml(tmp_path, stream, drain_seconds=10)
    port = free_port()
    proxy = Proxy(write_config(tmp_path, port, fake_upstream.url, extra, name="proxy.yaml"), port)  # type: ignore[attr-defined]
    processes.append(proxy)
    worker = Worker(write_config(tmp_path, 0, fake_upstream.url, extra, name="worker.yaml"), "worker")  # type: ignore[attr-defined]
    processes.append(worker)  # stopped by its PID at the end if it is still running
    assert chat(proxy, "drained-1").status_code == 200
    assert wait_for(lambda: fake_upstream.chat_bodies("judge_relevance") or fake_upstream.chat_bodies("judge_consistency"), timeout=20)
    worker.process.send_signal(signal.SIGTERM)  # once: a second SIGTERM during the drain kills, as for the proxy
    assert worker.process.wait(30) == 0
    assert [s.request_id for s in stored(tmp_path)] == ["drained-1"]


@needs_redis
def test_a_full_stream_refuses_and_counts_and_never_trims_a_pending_job(tmp_path, fake_upstream: FakeUpstream, stream, processes):
    """`queue_size` bounds the stream: past it new jobs are dropped (queue_full), the ones on it stay."""
    extra = monitor_yaml(tmp_path, stream, queue_size=3)
    port = free_port()
    proxy = Proxy(write_config(tmp_path, port, fake_upstream.url, extra, name="proxy.yaml"), port)  # type: ignore[attr-defined]
    processes.append(proxy)
    client = redis_sync()
    try:
        client.xgroup_create(stream, "perg-judges", id="0", mkstream=True)
        client.xreadgroup("perg-judges", "someone", {stream: ">"}, count=10)  # nothing yet
        for index in range(3):
            assert chat(proxy, f"full-{index}").status_code == 200
        assert wait_for(lambda: client.xlen(stream) == 3)
        [(_, [(first, _)])] = client.xreadgroup("perg-judges", "someone", {stream: ">"}, count=1)  # now pending
        for index in range(3, 6):
            assert chat(proxy, f"full-{index}").status_code == 200
        assert wait_for(lambda: proxy_metric(proxy, "perg_monitor_dropped_total", 'reason="queue_full"') == 3)
        assert proxy_metric(proxy, "perg_monitor_published_total") == 3 and client.xlen(stream) == 3
        assert client.xrange(stream, first, first), "the pending entry is still there"
    finally:
        client.close()


@needs_redis
def test_judge_in_process_reads_the_stream_in_the_serving_process(tmp_path, start_proxy, fake_upstream: FakeUpstream, stream):
    fake_upstream.scripts["judge"] = judge_script()
    monitor = orjson.loads(monitor_yaml(tmp_path, stream).split("monitor: ", 1)[1].split("\n", 1)[0])
    proxy = start_proxy(profiles={"backend": "sqlite", "path": str(tmp_path / "shared.db")}, monitor={**monitor, "judge_in_process": True})
    body = {"model": "echo", "messages": [{"role": "user", "content": "Hi"}], "personalization": {"preferences": [STYLE]}}
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "X-Request-ID": "here-1"}
    assert httpx2.post(f"{proxy.base_url}/chat/completions", json=body, headers=headers, timeout=30).status_code == 200
    labels = {"model": "echo", "strategy": "off", "role": "served", "relevance": "relevant"}
    assert wait_for(lambda: proxy.metric("perg_monitor_judged_total", labels) == 1, timeout=20)
    assert [s.request_id for s in stored(tmp_path)] == ["here-1"]
    assert proxy.metric("perg_monitor_published_total") == 1


@needs_redis
def test_a_slow_job_of_a_live_worker_is_not_claimed(tmp_path, fake_upstream: FakeUpstream, stream, processes):
    """Judging takes 3 x 0.8 s, past claim_after_seconds (1 s): its worker keeps it claimed, so the
    other worker never takes it, and it is delivered once."""
    fake_upstream.scripts["judge"] = judge_script(delay=0.8)
    extra = monitor_yaml(tmp_path, stream)
    port = free_port()
    proxy = Proxy(write_config(tmp_path, port, fake_upstream.url, extra, name="proxy.yaml"), port)  # type: ignore[attr-defined]
    processes.append(proxy)
    config = write_config(tmp_path, 0, fake_upstream.url, extra, name="worker.yaml")  # type: ignore[attr-defined]
    workers = [Worker(config, "worker-a"), Worker(config, "worker-b")]
    processes.extend(workers)
    assert chat(proxy, "slow-1").status_code == 200
    assert wait_for(lambda: [s for s in stored(tmp_path) if s.request_id == "slow-1"], timeout=30)
    assert sum(worker.metric("perg_monitor_claimed_total") for worker in workers) == 0
    assert len(fake_upstream.chat_bodies("judge_relevance")) == 1  # judged by one worker only


@needs_redis
def test_consumers_of_gone_workers_are_forgotten(tmp_path, fake_upstream: FakeUpstream, stream, processes):
    """Every worker pod has its own consumer name; one idle with nothing pending for 10 x
    claim_after_seconds is deleted from the group, the live worker's own never."""
    from proxy.monitor.job import Job
    from proxy.monitor.queue import encode_job

    fake_upstream.scripts["judge"] = judge_script()
    config = write_config(tmp_path, 0, fake_upstream.url, monitor_yaml(tmp_path, stream, claim_after_seconds=0.1), name="worker.yaml")  # type: ignore[attr-defined]
    worker = Worker(config, "worker")
    processes.append(worker)
    client = redis_sync()
    try:
        client.xgroup_createconsumer(stream, "perg-judges", "ghost")  # a worker that then died
        assert "ghost" in {c["name"].decode() for c in client.xinfo_consumers(stream, "perg-judges")}
        job = Job(
            request_id="forget-1", user_id=None, model="echo", strategy="off", body={"model": "echo"}, query="Hi?",
            preferences=(STYLE,), answer="Hello.", reference="Hello.", judge_served=True, shadow=False,
        )  # fmt: skip
        client.xadd(stream, {"job": encode_job(job)})  # the worker's consumer exists once it got a job

        def names() -> set[str]:
            return {c["name"].decode() for c in client.xinfo_consumers(stream, "perg-judges")}

        assert wait_for(lambda: worker.consumer in names(), timeout=10)
        assert wait_for(lambda: "ghost" not in names(), timeout=10)
        time.sleep(1.5)  # past 10 x claim_after_seconds for the worker too
        assert worker.consumer in names()
    finally:
        client.close()

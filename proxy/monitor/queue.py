"""The shared monitor queue (`monitor.queue: redis`): a Redis Stream between the serving
processes, which only publish sampled jobs, and the judge workers (`perg-proxy monitor-worker`),
which read them through one consumer group (docs/monitor.md, "A shared queue").

Serving side, `JobPublisher`: `submit()` never waits and never raises. It puts the job in a small
local buffer (bounded by `queue_size` jobs and `queue_bytes`); one task writes the buffer to the
stream in batches (after at most `PUBLISH_LINGER`, so the request path pays one Redis call per batch,
not one per job). A Redis that fails drops the batch and counts it (`redis_unavailable`), and for
the next second new jobs are dropped at once, so nothing piles up and no request waits on Redis.

The stream's bound: an acknowledged entry is deleted (XACK and XDEL in one transaction), so the
stream holds only jobs not yet judged, pending ones included. A batch is written by one Lua script
that refuses a job once XLEN reaches `queue_size` (counted as `queue_full`, as the memory queue
does) and otherwise XADDs it with `MAXLEN ~ queue_size`. Since the length never exceeds the bound
when an entry is added, the approximate trim has nothing to trim and cannot silently drop a
pending entry; it is only a backstop against other writers. A pending entry that is gone anyway
when claimed (XAUTOCLAIM reports deleted ids) is counted in `perg_monitor_stream_lost_total`.

Worker side, `StreamJudges`: `monitor.workers` consumers read new entries (XREADGROUP `>`); each
job is judged and its verdicts stored (`Evaluator(exactly_once=True)`), and only then acknowledged.
A job that raises stays pending. While a job is judged its worker keeps it claimed (XCLAIM JUSTID
every third of `claim_after_seconds`), so only the jobs of a dead or frozen worker go idle. Every `reclaim_interval_seconds` the worker claims entries idle
for `claim_after_seconds` (XAUTOCLAIM), from any consumer, a dead one included; an entry delivered
more than `max_deliveries` times (its count read with XPENDING) is moved to the dead-letter stream
`<stream>:dead` with its delivery count, and counted. Verdicts are unique per (request id, role,
judge fingerprint) in the store, so a job judged twice (its worker died after storing, before
acknowledging) is stored and counted once.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import orjson
import structlog

from ..config import MonitorSettings
from ..metrics import Metrics
from .job import Job

log = structlog.get_logger("perg.monitor")

PUBLISH_BATCH = 64
PUBLISH_LINGER = 0.02  # seconds the publisher waits for a batch to fill: one Redis call per batch, not per job
DOWN_SECONDS = 1.0  # after a failed write, drop at once for this long
DEAD_LETTER_MAXLEN = 10_000
FORGET_AFTER = 10  # a consumer with nothing pending, idle this many claim_after_seconds, is deleted
ADD_UNLESS_FULL = """
local length = redis.call('XLEN', KEYS[1])
local bound = tonumber(ARGV[1])
local added = 0
for i = 2, #ARGV do
  if length >= bound then break end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', bound, '*', 'job', ARGV[i])
  length = length + 1
  added = added + 1
end
return added
"""


def encode_job(job: Job) -> bytes:
    return orjson.dumps(job)  # orjson writes a dataclass as an object of its fields, without copying it first


def decode_job(raw: bytes | str) -> Job:
    """A job from its stream field; `ValueError`/`TypeError` for anything else (a poison entry)."""
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("a job must be a JSON object")
    data["preferences"] = tuple(data.get("preferences") or ())
    return Job(**data)


def redis_client(url: str) -> Any:
    import redis.asyncio as redis

    return redis.from_url(url, socket_connect_timeout=1, socket_timeout=5, health_check_interval=30)


class JobPublisher:
    """The serving process's side of the stream (see the module docstring)."""

    def __init__(self, settings: MonitorSettings, metrics: Metrics) -> None:
        self.settings = settings
        self._metrics = metrics
        self._buffer: deque[Job] = deque()
        self._bytes = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing is buffered or being written
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._redis: Any = None
        self._script: Any = None
        self._down_until = 0.0
        self._writing = 0
        self.accepting = False

    async def start(self) -> None:
        assert self.settings.redis_url is not None
        self._redis = redis_client(self.settings.redis_url)
        self._script = self._redis.register_script(ADD_UNLESS_FULL)
        self._task = asyncio.create_task(self._run(), name="perg-monitor-publisher")
        self.accepting = True

    def submit(self, job: Job) -> bool:
        dropped = self._metrics.monitor_dropped
        if not self.accepting:
            dropped.labels("not_running").inc()
            return False
        if time.monotonic() < self._down_until:
            dropped.labels("redis_unavailable").inc()
            return False
        if len(self._buffer) >= self.settings.queue_size or self._bytes + job.size > self.settings.queue_bytes:
            dropped.labels("queue_full").inc()
            return False
        self._buffer.append(job)
        self._bytes += job.size
        self._idle.clear()
        self._wake.set()
        return True

    @property
    def depth(self) -> int:
        """Jobs in this process not yet written to the stream."""
        return len(self._buffer) + self._writing

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if len(self._buffer) < PUBLISH_BATCH:
                await asyncio.sleep(PUBLISH_LINGER)
            self._wake.clear()
            while self._buffer:
                await self._write(self._take())
            self._idle.set()

    def _take(self) -> list[Job]:
        batch: list[Job] = []
        while self._buffer and len(batch) < PUBLISH_BATCH:
            job = self._buffer.popleft()
            self._bytes -= job.size
            batch.append(job)
        self._writing = len(batch)
        return batch

    async def _write(self, batch: list[Job]) -> None:
        m = self._metrics
        try:
            added = int(await self._script(keys=[self.settings.stream], args=[self.settings.queue_size, *map(encode_job, batch)]))
        except Exception as error:  # noqa: BLE001 - Redis failing drops and counts, never fails a request
            m.monitor_dropped.labels("redis_unavailable").inc(len(batch))
            self._down_until = time.monotonic() + DOWN_SECONDS
            self._drop_buffer("redis_unavailable")
            log.warning("monitor_queue_unavailable", error=str(error)[:200], dropped=len(batch))
            return
        finally:
            self._writing = 0
        for job in batch[:added]:
            m.monitor_enqueued.labels("served" if job.judge_served else "shadow").inc()
        m.monitor_published.inc(added)
        if added < len(batch):
            m.monitor_dropped.labels("queue_full").inc(len(batch) - added)

    def _drop_buffer(self, reason: str) -> None:
        if self._buffer:
            self._metrics.monitor_dropped.labels(reason).inc(len(self._buffer))
        self._buffer.clear()
        self._bytes = 0

    async def stop(self, drain: float) -> None:
        """Stop accepting; write what is buffered for up to `drain` seconds, count the rest."""
        self.accepting = False
        with suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), drain)
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        self._drop_buffer("shutdown")
        if self._redis is not None:
            await self._redis.aclose()


def consumer_name() -> str:
    return f"{socket.gethostname()[:60]}-{os.getpid()}-{os.urandom(2).hex()}"


class StreamJudges:
    """The judge workers' side of the stream: consumers, the reclaimer, the stream's gauges.
    `handle(job)` judges and stores one job (it raises when the job must be delivered again)."""

    def __init__(self, settings: MonitorSettings, metrics: Metrics, handle: Callable[[Job], Awaitable[None]]) -> None:
        self.settings = settings
        self._metrics = metrics
        self._handle = handle
        self.name = consumer_name()
        self._redis: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self.ready = False
        self.busy = 0

    async def start(self) -> None:
        assert self.settings.redis_url is not None
        self._redis = redis_client(self.settings.redis_url)
        self._tasks = [asyncio.create_task(self._consume(), name=f"perg-judge-consumer-{i}") for i in range(self.settings.workers)]
        self._tasks.append(asyncio.create_task(self._reclaim_forever(), name="perg-judge-reclaimer"))
        self._tasks.append(asyncio.create_task(self._gauges_forever(), name="perg-judge-gauges"))
        log.info("judge_worker_started", consumer=self.name, stream=self.settings.stream, group=self.settings.consumer_group)

    async def ensure_group(self) -> None:
        from redis.exceptions import ResponseError

        try:
            await self._redis.xgroup_create(self.settings.stream, self.settings.consumer_group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def ping(self) -> str:
        """ "ok", or why Redis cannot be used."""
        try:
            await asyncio.wait_for(self._redis.ping(), 2)
        except Exception as error:  # noqa: BLE001 - readiness reports, never raises
            return type(error).__name__
        return "ok"

    async def _consume(self) -> None:
        block = int(self.settings.worker.block_seconds * 1000)
        while not self._stopping.is_set():
            try:
                if not self.ready:
                    await self.ensure_group()
                    self.ready = True
                found = await self._redis.xreadgroup(
                    self.settings.consumer_group, self.name, {self.settings.stream: ">"}, count=1, block=block
                )
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - Redis down: wait and retry, never exit
                self.ready = "NOGROUP" not in str(error) and self.ready
                log.warning("judge_worker_read_failed", error=str(error)[:200])
                await self._pause(1.0)
                continue
            for _, entries in found or []:
                for entry_id, fields in entries:
                    await self._job(entry_id, fields)

    async def _pause(self, seconds: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _job(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        """Judge one entry, then acknowledge it (and delete it); leave it pending on failure.
        Shielded: a drain that cancels the consumer lets a started job finish or fail."""
        task = asyncio.ensure_future(self._judge_and_ack(entry_id, fields))
        self._busy.add(task)
        task.add_done_callback(self._busy.discard)
        await asyncio.shield(task)

    async def _judge_and_ack(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        m = self._metrics
        started = time.perf_counter()
        self.busy += 1
        keepalive = asyncio.ensure_future(self._keep_claimed(entry_id))
        try:
            await self._handle(decode_job(fields.get(b"job", b"")))
            await self._ack(entry_id)
        except Exception as error:  # noqa: BLE001 - the entry stays pending and is delivered again
            m.monitor_worker_jobs.labels("failed").inc()
            log.warning("judge_job_failed", entry=entry_id.decode(), error=f"{type(error).__name__}: {str(error)[:200]}")
            return
        finally:
            keepalive.cancel()
            self.busy -= 1
            m.monitor_worker_job_duration.observe(time.perf_counter() - started)
        m.monitor_worker_jobs.labels("acknowledged").inc()

    async def _keep_claimed(self, entry_id: bytes) -> None:
        """While a job is being judged, reset its idle time every third of `claim_after_seconds`
        (XCLAIM to itself with JUSTID, which does not count as a delivery), so a slow job of a
        live worker is never claimed by another; a dead worker stops, and its jobs are claimed."""
        s = self.settings
        while True:
            await asyncio.sleep(s.claim_after_seconds / 3)
            with suppress(Exception):
                await self._redis.xclaim(s.stream, s.consumer_group, self.name, 0, [entry_id], justid=True)

    async def _ack(self, entry_id: bytes) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.settings.stream, self.settings.consumer_group, entry_id)
            pipe.xdel(self.settings.stream, entry_id)
            await pipe.execute()

    async def _reclaim_forever(self) -> None:
        while not self._stopping.is_set():
            await self._pause(self.settings.worker.reclaim_interval_seconds)
            if self._stopping.is_set():
                return
            try:
                await self.reclaim()
                await self.forget_idle_consumers()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - retried on the next round
                log.warning("judge_reclaim_failed", error=str(error)[:200])

    async def reclaim(self) -> int:
        """Claim entries idle past `claim_after_seconds`; judge them, or dead-letter those
        delivered more than `max_deliveries` times. The number claimed."""
        s, m = self.settings, self._metrics
        idle = int(s.claim_after_seconds * 1000)
        reply = await self._redis.xautoclaim(s.stream, s.consumer_group, self.name, idle, start_id="0-0", count=max(1, s.workers))
        entries, deleted = reply[1], (reply[2] if len(reply) > 2 else [])
        if deleted:
            m.monitor_stream_lost.inc(len(deleted))
            await self._redis.xack(s.stream, s.consumer_group, *deleted)  # nothing left to judge
            log.warning("judge_entries_lost", entries=len(deleted))
        for entry_id, fields in entries:
            m.monitor_claimed.inc()
            deliveries = await self.deliveries(entry_id)
            if deliveries > s.max_deliveries:
                await self._dead_letter(entry_id, fields, deliveries)
            else:
                await self._job(entry_id, fields)
        return len(entries)

    async def forget_idle_consumers(self) -> int:
        """Delete the group's consumers (workers gone: every pod has its own name) that hold no
        pending entry and were idle for `FORGET_AFTER` × `claim_after_seconds`; the number deleted."""
        s = self.settings
        idle_ms = FORGET_AFTER * s.claim_after_seconds * 1000
        gone = 0
        for consumer in await self._redis.xinfo_consumers(s.stream, s.consumer_group):
            name = _text(consumer["name"])
            if name != self.name and int(consumer["pending"]) == 0 and int(consumer["idle"]) > idle_ms:
                await self._redis.xgroup_delconsumer(s.stream, s.consumer_group, name)
                gone += 1
        return gone

    async def deliveries(self, entry_id: bytes) -> int:
        """How many times the group delivered the entry (XPENDING), 0 when it is not pending."""
        found = await self._redis.xpending_range(self.settings.stream, self.settings.consumer_group, entry_id, entry_id, 1)
        return int(found[0]["times_delivered"]) if found else 0

    async def _dead_letter(self, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int) -> None:
        s = self.settings
        letter = {**fields, b"entry": entry_id, b"deliveries": str(deliveries).encode(), b"consumer": self.name.encode()}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(s.dead_letter_stream, letter, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
            pipe.xack(s.stream, s.consumer_group, entry_id)
            pipe.xdel(s.stream, entry_id)
            await pipe.execute()
        self._metrics.monitor_dead_lettered.inc()
        self._metrics.monitor_worker_jobs.labels("dead_lettered").inc()
        log.error("judge_job_dead_lettered", entry=entry_id.decode(), deliveries=deliveries, stream=s.dead_letter_stream)

    async def _gauges_forever(self) -> None:
        while not self._stopping.is_set():
            with suppress(Exception):
                await self.read_gauges()
            await self._pause(5.0)

    async def read_gauges(self) -> dict[str, int]:
        """The stream's length, the group's lag and pending count, the dead letters' length."""
        s, m = self.settings, self._metrics
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xlen(s.stream)
            pipe.xinfo_groups(s.stream)
            pipe.xlen(s.dead_letter_stream)
            length, groups, dead = await pipe.execute()
        group: dict[Any, Any] = next((g for g in groups if _text(g.get("name")) == s.consumer_group), {})
        figures = {"length": int(length), "lag": int(group.get("lag") or 0), "pending": int(group.get("pending") or 0), "dead": int(dead)}
        m.monitor_stream_length.set(figures["length"])
        m.monitor_stream_lag.set(figures["lag"])
        m.monitor_stream_pending.set(figures["pending"])
        m.monitor_dead_letter_length.set(figures["dead"])
        return figures

    async def stop(self, drain: float) -> int:
        """Stop reading; let started jobs finish for up to `drain` seconds. What is left stays
        pending in Redis (another worker claims it): nothing is lost. The number left."""
        self._stopping.set()
        if self._busy:
            await asyncio.wait(set(self._busy), timeout=drain)
        left = len(self._busy)
        for task in [*self._tasks, *self._busy]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._busy, return_exceptions=True)
        if left:
            log.warning("judge_worker_left_pending", jobs=left)
        if self._redis is not None:
            await self._redis.aclose()
        return left


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

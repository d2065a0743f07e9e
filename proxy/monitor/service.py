"""`Monitor`: the bounded queue, its fixed workers, and the canary schedule, for one process.

Nothing here is on a request's path but `submit()`, which never waits and never raises: a full
queue (`queue_size` jobs, or `queue_bytes` of what the jobs hold) drops the sample and counts it. On shutdown the queue drains for `drain_seconds`; what is
left (queued or in progress) is abandoned and counted.

With `monitor.queue: redis` the jobs go to the shared Redis stream instead (`queue.py`) and, by
default (`judge_in_process: false`), this process judges nothing: `perg-proxy monitor-worker`
processes do. With `judge_in_process: true` it also runs one such worker's consumers itself.
"""

from __future__ import annotations

import asyncio
import functools
from contextlib import suppress
from typing import Any

import structlog

from ..config import Retries, Settings
from ..metrics import Metrics, private_metrics
from ..perg.agreement import agreement_rows, current_agreement, export
from ..perg.judges import Judge, ask_upstream
from ..pipeline.context import PipelineContext
from ..preferences.handle import StoreHandle
from ..prompts.loader import Prompts
from ..upstream.client import Upstreams
from .canary import Canary
from .evaluate import Evaluator
from .job import Job
from .queue import JobPublisher, StreamJudges
from .sampler import Sampler

log = structlog.get_logger("perg.monitor")
AGREEMENT_SECONDS = 60.0  # how often the agreement gauge is computed again from the stored labels
AGREEMENT_LABELS = 10000  # the newest labels it reads


class Monitor:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        store: StoreHandle,
        prompts: Prompts,
        upstreams: Upstreams | None = None,
        *,
        judge_worker: bool = False,
    ) -> None:
        """`judge_worker`: the monitor of `perg-proxy monitor-worker`: it reads the Redis stream,
        judges and stores, and never publishes or runs the canary."""
        self.judge_worker = judge_worker
        self.settings = settings.monitor
        self._shared = upstreams  # the process's clients: the monitor's calls count in their connection limits
        self.sampler = Sampler(settings.monitor)
        self._all = settings
        self._metrics = metrics
        self._store = store
        self._prompts = prompts
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=settings.monitor.queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._canary_task: asyncio.Task[None] | None = None
        self._accepting = False
        self._busy = 0
        self._queued_bytes = 0
        self.stop_by: float | None = None  # loop time the drain must end by (set by the server's shutdown)
        self._judges: dict[str, Judge] = {}
        self._upstreams: Upstreams | None = None
        self.evaluator: Evaluator | None = None
        self.canary: Canary | None = None
        self.publisher: JobPublisher | None = None
        self.stream_judges: StreamJudges | None = None
        self._agreement_task: asyncio.Task[None] | None = None

    async def open_judges(self) -> Evaluator:
        """The monitor's own upstream clients and its evaluator (what `start` and `rejudge` use)."""
        own = private_metrics()
        if self._shared is not None:
            self._upstreams = self._shared.sharing(own)
        else:
            self._upstreams = Upstreams(self._all.upstreams, own)
            await self._upstreams.start()
        pipeline = PipelineContext(self._all.personalization, self._upstreams, own, self._prompts)
        exactly_once = self.settings.queue == "redis"
        self.evaluator = Evaluator(self.settings, self.judge_for, pipeline, self._metrics, self._store, exactly_once=exactly_once)
        return self.evaluator

    async def close_judges(self) -> None:
        if self._upstreams is not None and self._shared is None:
            await self._upstreams.close()

    async def start(self) -> None:
        if not self.settings.enabled and not self.judge_worker:
            return
        evaluator = await self.open_judges()
        pipeline = evaluator.pipeline
        if self.settings.queue == "redis":
            if not self.judge_worker:
                self.publisher = JobPublisher(self.settings, self._metrics)
                await self.publisher.start()
            if self.settings.judges_here or self.judge_worker:
                self.stream_judges = StreamJudges(self.settings, self._metrics, evaluator.run)
                await self.stream_judges.start()
        else:
            self._workers = [asyncio.create_task(self._work(), name=f"perg-monitor-worker-{i}") for i in range(self.settings.workers)]
        if self.settings.canary.enabled and not self.judge_worker:
            self.canary = Canary(self._all, pipeline, evaluator, self._metrics)
            self._canary_task = asyncio.create_task(self.canary.run_forever(), name="perg-monitor-canary")
        self._agreement_task = asyncio.create_task(self._agreement_forever(), name="perg-monitor-agreement")
        self._accepting = True
        log.info(
            "monitor_started",
            queue=self.settings.queue,
            judges_here=self.settings.judges_here,
            workers=self.settings.workers if self.settings.judges_here else 0,
            sample_rate=self.settings.sample_rate,
            shadow_rate=self.settings.shadow_rate,
        )

    def judge_for(self, request_model: str) -> tuple[Judge, str]:
        """The judges (one per upstream, on the monitor's own clients) and the judge model: the
        configured ones, else the request's model on its upstream."""
        settings = self.settings.judge
        model = settings.model or request_model
        if settings.upstream:
            upstream = next(u for u in self._all.upstreams if u.name == settings.upstream)
        else:
            assert self._upstreams is not None
            upstream = self._upstreams.for_model(model).settings
        if upstream.name not in self._judges:
            assert self._upstreams is not None
            client = self._upstreams.named(upstream.name)
            retries = Retries(max_attempts=settings.max_retries + 1)
            ask = functools.partial(ask_upstream, client, timeout=settings.timeout_seconds, retries=retries, request_id="perg-monitor")
            self._judges[upstream.name] = Judge.create(
                ask, upstream.structured_output, settings.max_tokens, overrides=settings.prompts.model_dump()
            )
        return self._judges[upstream.name], model

    def submit(self, job: Job) -> bool:
        """Queue a sampled request for judging; never waits, never raises."""
        role = "served" if job.judge_served else "shadow"
        if self.publisher is not None:
            return self.publisher.submit(job)
        if not self._accepting:
            self._metrics.monitor_dropped.labels("not_running").inc()
            return False
        if self._queued_bytes + job.size > self.settings.queue_bytes:
            self._metrics.monitor_dropped.labels("queue_full").inc()
            return False
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._metrics.monitor_dropped.labels("queue_full").inc()
            return False
        self._queued_bytes += job.size
        self._metrics.monitor_enqueued.labels(role).inc()
        self._metrics.monitor_queue_depth.set(self._queue.qsize())
        return True

    async def _work(self) -> None:
        assert self.evaluator is not None
        while True:
            job = await self._queue.get()
            self._queued_bytes -= job.size
            self._metrics.monitor_queue_depth.set(self._queue.qsize())
            self._busy += 1
            try:
                await self.evaluator.run(job)
            except Exception as error:  # one bad sample never stops a worker
                self._metrics.monitor_judge_errors.labels("worker", type(error).__name__[:40]).inc()
                log.exception("monitor_job_failed", request_id=job.request_id)
            finally:
                self._busy -= 1
                self._queue.task_done()

    async def agreement(self) -> dict[str, Any]:
        """Cohen's κ of the judges against the operators' labels (`agreement.py`): per judge and
        fingerprint, and of the current judges, which also sets `perg_monitor_judge_agreement`."""
        if self.evaluator is None:
            return {"fingerprints": [], "current": {}}
        evaluator = self.evaluator
        samples = await (await self._store.get()).labelled_verdicts(AGREEMENT_LABELS)
        current = current_agreement(samples, lambda model: evaluator.fingerprints(model)[0])
        export(self._metrics, current)
        return {"fingerprints": agreement_rows(samples), "current": current}

    async def _agreement_forever(self) -> None:
        while True:
            try:
                await self.agreement()
            except Exception as error:  # noqa: BLE001 - the gauge keeps its last value; tried again later
                log.info("agreement_not_computed", error=str(error)[:200])
            await asyncio.sleep(AGREEMENT_SECONDS)

    async def stop(self) -> None:
        """Stop accepting, drain for `drain_seconds`, then abandon (and count) the rest."""
        self._accepting = False
        if self._agreement_task is not None:
            self._agreement_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._agreement_task
        if self._canary_task is not None:
            self._canary_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._canary_task
        drain = self.settings.drain_seconds
        if self.stop_by is not None:
            drain = max(0.0, min(drain, self.stop_by - asyncio.get_running_loop().time()))
        if self.publisher is not None:
            await self.publisher.stop(drain)
        if self.stream_judges is not None:
            await self.stream_judges.stop(drain)  # what is left stays pending in Redis
        if self._workers:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), drain)
            abandoned = self._queue.qsize() + self._busy
            if abandoned:
                self._metrics.monitor_dropped.labels("shutdown").inc(abandoned)
                log.warning("monitor_abandoned", samples=abandoned)
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        self._metrics.monitor_queue_depth.set(0)
        if self._upstreams is not None and self._shared is None:
            await self._upstreams.close()

    @property
    def depth(self) -> int:
        """Jobs waiting in this process (with redis: not yet written to the stream)."""
        return self.publisher.depth if self.publisher is not None else self._queue.qsize()

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def idle(self) -> bool:
        busy = self.stream_judges.busy if self.stream_judges is not None else 0
        return self.depth == 0 and self._busy == 0 and busy == 0

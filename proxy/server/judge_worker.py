"""`perg-proxy monitor-worker`: a judge worker of the shared monitor queue (`monitor.queue: redis`).

It reads sampled jobs from the Redis stream through the consumer group, runs the judges on the
configured upstreams, stores the verdicts in the profile store (sqlite on one machine, postgres
for several) and only then acknowledges each job (proxy/monitor/queue.py). Run one or many, on
any machine; they share the work. It serves no client traffic; its own small HTTP server
(`monitor.worker.host` / `port`) answers `/healthz`, `/readyz` (Redis and the store answer, the
consumer group exists, not draining) and `/metrics` (the stream's gauges and this worker's
counters).

On SIGTERM (or SIGINT): `/readyz` fails at once, the consumers stop reading, the jobs started get
up to `monitor.drain_seconds` to finish; what is left stays pending in Redis, where another worker
claims it after `monitor.claim_after_seconds`. Nothing is lost, and the process exits 0.
"""

from __future__ import annotations

import sys

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..config import ConfigError, Settings
from ..metrics import Metrics, exposition
from ..monitor.service import Monitor
from ..preferences.handle import StoreHandle
from .app import load_prompts
from .connections import make_runner
from .handlers import json_response
from .lifecycle import wait_for_signal

log = structlog.get_logger("perg.worker")
WORKER: web.AppKey[JudgeWorker] = web.AppKey("judge_worker")


class JudgeWorker:
    def __init__(self, settings: Settings) -> None:
        if settings.monitor.queue != "redis":
            raise ConfigError("perg-proxy monitor-worker reads the shared queue: set monitor.queue: redis and monitor.redis_url")
        if settings.profiles.backend == "memory":
            raise ConfigError("perg-proxy monitor-worker stores verdicts where the proxy reads them: profiles.backend sqlite or postgres")
        self.settings = settings
        self.metrics = Metrics()
        self.store = StoreHandle(settings.profiles)
        self.monitor = Monitor(settings, self.metrics, self.store, load_prompts(settings), judge_worker=True)
        self.draining = False

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        judges = self.monitor.stream_judges
        redis = await judges.ping() if judges is not None else "not_started"
        store = await self.store.ping()
        group = "ok" if judges is not None and judges.ready else "not_created"
        ready = redis == "ok" and store == "ok" and group == "ok" and not self.draining
        return ready, {"redis": redis, "store": store, "consumer_group": group}


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    ready, states = await worker.readiness()
    status = "draining" if worker.draining else ("ready" if ready else "not_ready")
    judges = worker.monitor.stream_judges
    body = {"status": status, **states, "consumer": judges.name if judges is not None else None}
    return json_response(body, 200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    judges = worker.monitor.stream_judges
    if judges is not None:
        try:
            await judges.read_gauges()
        except Exception as error:  # noqa: BLE001 - the gauges keep their last values
            log.info("stream_gauges_unavailable", error=str(error)[:200])
    return web.Response(body=exposition(worker.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_worker_app(worker: JudgeWorker) -> web.Application:
    app = web.Application()
    app[WORKER] = worker
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def run_judge_worker(settings: Settings) -> int:
    worker = JudgeWorker(settings)
    await worker.store.start()
    await worker.monitor.start()
    runner = make_runner(create_worker_app(worker), shutdown_timeout=0.25)
    await runner.setup()
    host, port = settings.monitor.worker.host, settings.monitor.worker.port
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as error:
        print(f"perg-proxy: cannot listen on {host}:{port}: {error.strerror}", file=sys.stderr)
        await worker.monitor.stop()
        await runner.cleanup()
        await worker.store.close()
        return 1
    log.info("worker_listening", host=host, port=port, stream=settings.monitor.stream, group=settings.monitor.consumer_group)
    await wait_for_signal()
    worker.draining = True
    log.info("worker_draining", drain_seconds=settings.monitor.drain_seconds)
    await worker.monitor.stop()
    await runner.cleanup()
    await worker.store.close()
    log.info("worker_stopped")
    return 0

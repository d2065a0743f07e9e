"""Running the proxy: listen, wait for a signal, shut down gracefully.

On SIGTERM (or SIGINT): `/readyz` turns unhealthy at once; the listener keeps serving for
`server.pre_stop_seconds` (so a load balancer can take the replica out); then it stops accepting,
closes idle connections, lets in-flight requests and open streams finish, cancels what is left,
drains the monitor and closes the upstreams and the store, all within `server.grace_seconds`
(one deadline for the whole shutdown), and the process exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from contextlib import suppress
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from ..config import ConfigError, Settings
from ..local_model import MODEL_ALIAS, LocalModelError, LocalModelProcess
from .app import create_app
from .connections import connection_cap, listen, make_runner, raise_file_limit
from .services import SERVICES

log = structlog.get_logger("perg.server")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CANCEL_SECONDS = 0.25  # for aiohttp to cancel a handler left at the deadline (it waits twice)
CLOSE_SECONDS = 0.5  # for closing the upstream pools and the store


async def serve(settings: Settings, with_local_model: bool = False, reuse_port: bool = False) -> int:
    local = await start_local_model(settings) if with_local_model else None
    try:
        app = create_app(settings)
        raise_file_limit()
        runner = make_runner(app, shutdown_timeout=min(CANCEL_SECONDS, settings.server.grace_seconds / 4))
        await runner.setup()
        try:
            listener = await listen(runner, reuse_port=reuse_port)
        except OSError as error:
            print(f"perg-proxy: cannot listen on {settings.server.host}:{settings.server.port}: {error.strerror}", file=sys.stderr)
            await runner.cleanup()
            return 1
        port = listener.sockets[0].getsockname()[1] if listener.sockets else settings.server.port
        gc.freeze()  # start-up objects never need collecting: keeps full collections short
        # A young-generation collection walks every live young object, and at any moment most of
        # them belong to requests still in flight: collected every 700 net allocations (the default)
        # they are walked again and again. Every 7,000 cuts the collector's share of a pass-through
        # request to almost nothing (docs/benchmark.md); the cyclic garbage held meanwhile is a few MB.
        gc.set_threshold(7000, 10, 10)
        log.info(
            "listening",
            host=settings.server.host,
            port=port,
            upstreams=[u.name for u in settings.upstreams],
            max_connections=connection_cap(settings),
        )
        if local is not None:
            print_examples(settings, port)
        await wait_for_signal()
        await drain(app, runner, listener, settings)
        return 0
    finally:
        if local is not None:
            await asyncio.to_thread(local.stop)


async def drain(app: web.Application, runner: web.AppRunner, listener: asyncio.Server, settings: Settings) -> None:
    """Fail readiness, keep serving for the pre-stop delay, then stop within the grace period."""
    services = app[SERVICES]
    services.draining = True
    log.info("draining", pre_stop_seconds=settings.server.pre_stop_seconds, grace_seconds=settings.server.grace_seconds)
    if settings.server.pre_stop_seconds:
        await asyncio.sleep(settings.server.pre_stop_seconds)
    log.info("shutting_down")
    loop = asyncio.get_running_loop()
    grace = settings.server.grace_seconds
    deadline = loop.time() + grace
    listener.close()  # stop accepting
    assert runner.server is not None
    runner.server.pre_shutdown()  # idle connections close now, busy ones after their response
    # In-flight work gets what is left of the grace period once cancelling and closing are paid for.
    finish_by = deadline - min(CANCEL_SECONDS * 2 + CLOSE_SECONDS, grace / 2)
    if services.in_flight:
        services.all_done = asyncio.Event()
        with suppress(TimeoutError):
            await asyncio.wait_for(services.all_done.wait(), max(0.0, finish_by - loop.time()))
    services.monitor.stop_by = deadline - min(CLOSE_SECONDS, grace / 4)
    await runner.cleanup()  # cancels what is left (shutdown_timeout), then the cleanup contexts
    log.info("stopped", in_flight_cancelled=services.in_flight)


async def start_local_model(settings: Settings) -> LocalModelProcess:
    url = urlsplit(settings.upstreams[0].base_url)
    if url.hostname not in LOOPBACK or url.port is None:
        raise ConfigError(
            f"--with-local-model serves the first upstream's address, which must be a loopback host with a port; got {url.geturl()}"
        )
    print(f"perg-proxy: starting the local model on {url.hostname}:{url.port} ...", file=sys.stderr)
    try:
        return await asyncio.to_thread(LocalModelProcess(url.hostname, url.port).start)
    except LocalModelError as error:
        raise ConfigError(str(error)) from None


async def wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)


def print_examples(settings: Settings, port: int) -> None:
    key = settings.auth.client_keys[0].key if settings.auth.client_keys else "any-key"
    base = f"http://{settings.server.host}:{port}/v1"
    print(
        f"""
perg-proxy is ready at {base} (model '{MODEL_ALIAS}' on the local upstream).

  curl {base}/chat/completions \\
    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
    -d '{{"model": "{MODEL_ALIAS}", "messages": [{{"role": "user", "content": "What is the capital of France?"}}]}}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{base}', api_key='{key}'); print(c.chat.completions.create(model='{MODEL_ALIAS}', messages=[{{'role': 'user', 'content': 'Say hello'}}]).choices[0].message.content)"

Press Ctrl-C to stop.
""",
        file=sys.stderr,
        flush=True,
    )

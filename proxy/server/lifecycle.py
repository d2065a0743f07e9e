"""Running the proxy: listen, wait for a signal, shut down gracefully.

On SIGTERM (or SIGINT): `/readyz` turns unhealthy at once; the listener keeps serving for
`server.pre_stop_seconds` (so a load balancer can take the replica out); then it stops accepting,
lets in-flight requests and open streams finish for up to `server.grace_seconds` (cancelling what
is left), drains the monitor, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from ..config import ConfigError, Settings
from ..local_model import MODEL_ALIAS, LocalModelError, LocalModelProcess
from .app import create_app
from .connections import make_runner
from .services import SERVICES

log = structlog.get_logger("perg.server")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


async def serve(settings: Settings, with_local_model: bool = False, reuse_port: bool = False) -> int:
    local = await start_local_model(settings) if with_local_model else None
    try:
        app = create_app(settings)
        runner = make_runner(app, shutdown_timeout=settings.server.grace_seconds)
        await runner.setup()
        server = settings.server
        site = web.TCPSite(runner, server.host, server.port, reuse_port=reuse_port or None, backlog=server.backlog)
        try:
            await site.start()
        except OSError as error:
            print(f"perg-proxy: cannot listen on {settings.server.host}:{settings.server.port}: {error.strerror}", file=sys.stderr)
            await runner.cleanup()
            return 1
        port = _bound_port(site, settings.server.port)
        gc.freeze()  # start-up objects never need collecting: keeps full collections short
        log.info("listening", host=settings.server.host, port=port, upstreams=[u.name for u in settings.upstreams])
        if local is not None:
            print_examples(settings, port)
        await wait_for_signal()
        await drain(app, runner, settings)
        return 0
    finally:
        if local is not None:
            await asyncio.to_thread(local.stop)


async def drain(app: web.Application, runner: web.AppRunner, settings: Settings) -> None:
    """Fail readiness, keep serving for the pre-stop delay, then stop within the grace period."""
    app[SERVICES].draining = True
    log.info("draining", pre_stop_seconds=settings.server.pre_stop_seconds, grace_seconds=settings.server.grace_seconds)
    if settings.server.pre_stop_seconds:
        await asyncio.sleep(settings.server.pre_stop_seconds)
    log.info("shutting_down")
    await runner.cleanup()  # stop accepting; in-flight work gets grace_seconds; then cleanup_ctx
    log.info("stopped")


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


def _bound_port(site: web.TCPSite, configured: int) -> int:
    server = site._server  # aiohttp keeps the asyncio server here; only used to report port 0
    sockets = getattr(server, "sockets", None) or []
    return sockets[0].getsockname()[1] if sockets else configured


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

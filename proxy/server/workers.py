"""`perg-proxy serve --workers N`: N proxy processes sharing one port.

Each worker is a `perg-proxy serve` process that binds the port with SO_REUSEPORT (the kernel
spreads connections over them) and writes its metrics to a shared `PROMETHEUS_MULTIPROC_DIR`, so
`/metrics` from any worker reports the sum over all of them. The supervisor forwards SIGTERM and
SIGINT to every worker (each then shuts down gracefully), stops them all if one dies, and exits
with the worst exit code. Canary probes run in worker 0 only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import FrameType

from ..config import ConfigError, Settings
from ..local_model import LocalModelError, LocalModelProcess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def run_workers(settings: Settings, serve_args: list[str], with_local_model: bool) -> int:
    if settings.server.port == 0:
        raise ConfigError("server.port must be a fixed port when server.workers is more than 1")
    metrics_dir = tempfile.mkdtemp(prefix="perg-metrics-")
    local = _local_model(settings) if with_local_model else None
    children: list[subprocess.Popen] = []
    try:
        env = {**os.environ, MULTIPROC_ENV: metrics_dir}
        for index in range(settings.server.workers):
            command = [sys.executable, "-m", "proxy", "serve", *serve_args, "--worker-index", str(index)]
            children.append(subprocess.Popen(command, env=env))
        _forward_signals(children)
        if local is not None and _wait_listening(settings, children):
            from .lifecycle import print_examples

            print_examples(settings, settings.server.port)
        return _wait(children, metrics_dir)
    finally:
        _stop(children)
        if local is not None:
            local.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _local_model(settings: Settings) -> LocalModelProcess:
    from urllib.parse import urlsplit

    url = urlsplit(settings.upstreams[0].base_url)
    if url.hostname is None or url.port is None:
        raise ConfigError("--with-local-model needs the first upstream on a loopback host with a port")
    try:
        return LocalModelProcess(url.hostname, url.port).start()
    except LocalModelError as error:
        raise ConfigError(str(error)) from None


def _forward_signals(children: list[subprocess.Popen]) -> None:
    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)


def _wait_listening(settings: Settings, children: list[subprocess.Popen], timeout: float = 60) -> bool:
    url = f"http://{settings.server.host}:{settings.server.port}/healthz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and all(child.poll() is None for child in children):
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _wait(children: list[subprocess.Popen], metrics_dir: str) -> int:
    """Wait for every worker; if one exits on its own, stop the others (fail fast)."""
    codes: dict[int, int] = {}
    while len(codes) < len(children):
        for child in children:
            if child.pid in codes or child.poll() is None:
                continue
            codes[child.pid] = child.returncode
            _mark_dead(child.pid, metrics_dir)
            if child.returncode != 0:
                for other in children:
                    if other.poll() is None:
                        other.send_signal(signal.SIGTERM)
        time.sleep(0.1)
    return max((abs(code) for code in codes.values()), default=0)


def _mark_dead(pid: int, metrics_dir: str) -> None:
    from prometheus_client import multiprocess

    if Path(metrics_dir).is_dir():
        multiprocess.mark_process_dead(pid, metrics_dir)


def _stop(children: list[subprocess.Popen], timeout: float = 60) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

"""Processes for the benchmarks: the fake upstream and the proxy, each pinned to its own CPU."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(cpu: int, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def pin_self(cpu: int = 1) -> None:
    """Put this process (the load generator) on `cpu`, beside the fake upstream."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start_module(module: str, cpu: int = 1) -> tuple[subprocess.Popen, int]:
    """`python -m module --port P` pinned to `cpu`, once it listens on its free port P."""
    port = free_port()
    process = subprocess.Popen(pinned(cpu, [sys.executable, "-m", module, "--port", str(port)]), cwd=ROOT)
    wait_port(port)
    return process, port


def start_fake() -> tuple[subprocess.Popen, int]:
    return start_module("tests.fake_upstream")


def proxy_config(path: Path, port: int, upstream_port: int, extra_yaml: str = "") -> Path:
    """A benchmark proxy's config at `path`: on `port`, the fake upstream, memory profiles, the
    bench key; `extra_yaml` adds top-level keys."""
    path.write_text(
        f"""
server: {{host: 127.0.0.1, port: {port}}}
upstreams: [{{name: fake, base_url: "http://127.0.0.1:{upstream_port}/v1", api_key: sk-up}}]
profiles: {{backend: memory}}
auth: {{client_keys: [{KEY}], admin_key: admin}}
{extra_yaml}
"""
    )
    return path


def start_proxy(upstream_port: int, workdir: Path, extra_yaml: str = "", name: str = "proxy") -> tuple[subprocess.Popen, int]:
    """`perg-proxy serve` pinned to CPU 0 on the fake upstream; `extra_yaml` adds top-level keys."""
    port = free_port()
    config = proxy_config(workdir / f"{name}.yaml", port, upstream_port, extra_yaml)
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        pinned(0, [sys.executable, "-m", "proxy", "serve", "--config", str(config)]), cwd=ROOT, stdout=log, stderr=log
    )
    wait_port(port)
    return process, port


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run(coroutine):  # type: ignore[no-untyped-def]
    """Run a benchmark's coroutine on uvloop (the proxy's loop) when it is installed."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(coroutine)
    return uvloop.run(coroutine)

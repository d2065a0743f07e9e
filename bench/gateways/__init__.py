"""The paths the side-by-side benchmark measures, and the processes behind them.

A `Target` is one path from the load generator to the fake upstream: directly, or through a
gateway process (perg-proxy, LiteLLM's proxy, Portkey's gateway) pinned to the gateway CPU. Each
process is started with its output in a log file of the run's work directory and is stopped by
its PID (and its children's PIDs), also when the run fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import KEY, ROOT, free_port, pinned, start_proxy, wait_port
from bench.loadgen import chat_request
from bench.memory import tree

PREFERENCE = "Answer in the style of a pirate."


@dataclass
class Target:
    """One path under test; `process` is None for the direct path (nothing to measure in between)."""

    name: str
    port: int
    process: subprocess.Popen | None = None
    key: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict | None = None
    model: str = "echo"

    def request(self, stream: bool) -> bytes:
        return chat_request("127.0.0.1", self.port, "/v1/chat/completions", self.model, stream, self.key, self.extra, self.headers)


def wait_ready(process: subprocess.Popen, port: int, log: Path, timeout: float) -> None:
    """Wait until `port` accepts connections; fail at once (with the log's tail) if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}:\n{tail(log)}")
        try:
            wait_port(port, timeout=0.5)
            return
        except RuntimeError:
            continue
    raise RuntimeError(f"{process.args} not listening on {port} after {timeout:.0f}s:\n{tail(log)}")


def tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_tree(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the process, SIGKILL it after `timeout`, then SIGKILL any child it left behind."""
    members = tree(process.pid)[1:]
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Processes:
    """Every process a run started, stopped in reverse order by `stop_all` (call it in `finally`)."""

    started: list[subprocess.Popen] = field(default_factory=list)

    def add(self, process: subprocess.Popen) -> subprocess.Popen:
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        while self.started:
            stop_tree(self.started.pop())


def perg_proxy(processes: Processes, upstream_port: int, workdir: Path, strategy: str, name: str = "") -> Target:
    """`perg-proxy serve` on CPU 0 (bench/common.py), memory profile store, logging at warning;
    its config and log are `<name>.yaml` and `<name>.log` in `workdir` (`perg-<strategy>` by default)."""
    extra_yaml = f'personalization: {{default_strategy: "{strategy}"}}\nlogging: {{level: warning}}'
    process, port = start_proxy(upstream_port, workdir, extra_yaml, name or f"perg-{strategy}")
    processes.add(process)
    extra = {"personalization": {"preferences": [PREFERENCE]}} if strategy != "off" else None
    return Target(f"perg-proxy {strategy}", port, process, KEY, extra=extra)


def bare_forwarder(processes: Processes, upstream_port: int, workdir: Path) -> Target:
    """The floor: `bench/bare_forwarder.py` (aiohttp + uvloop, nothing else) on CPU 0."""
    port = free_port()
    log = workdir / "bare-forwarder.log"
    with log.open("wb") as out:
        argv = [sys.executable, "-m", "bench.bare_forwarder", "--port", str(port), "--upstream", f"http://127.0.0.1:{upstream_port}"]
        process = processes.add(subprocess.Popen(pinned(0, argv), cwd=ROOT, stdout=out, stderr=out))
    wait_ready(process, port, log, 30)
    return Target("bare aiohttp forwarder", port, process)


Starter = Callable[[Processes, int, Path], Target]

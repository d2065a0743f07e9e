"""Instructions per request: perg-proxy `off` against the bare aiohttp forwarder, under callgrind.

    python bench/instructions.py [--requests 2000] [--concurrency 32] [--stream]

CPU time per request moves with whatever else the machine runs (these machines are shared);
the number of instructions a process executes for the same work does not. Each gateway runs
under `valgrind --tool=callgrind` on the same fake upstream (tests/fake_upstream.py, model
`echo`); after a warm-up its counters are zeroed, a bounded load is sent, and the counters are
dumped: instructions per request, and their ratio. The ratio says where the proxy's own work
stands against the floor's however loaded the machine is; requests/s on a quiet machine
(`bench/side_by_side.py`) stays the measure of the throughput target, since an instruction of
the proxy is not always as cheap as one of the floor (a larger working set misses the caches
more often). Each gateway is stopped by its PID, also when the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import upstream  # noqa: E402
from bench.common import KEY, free_port, proxy_config, wait_port  # noqa: E402
from bench.loadgen import Result, chat_request, run_load  # noqa: E402

START_SECONDS = 600  # a Python process starts about 50x slower under valgrind
WARMUP = 300
OFF = 'personalization: {default_strategy: "off"}\nlogging: {level: warning}'


def total_instructions(dump: Path) -> int:
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals line in {dump}")


def load(port: int, request: bytes, concurrency: int, requests: int, max_seconds: float) -> Result:
    return asyncio.run(run_load("127.0.0.1", port, request, concurrency=concurrency, requests=requests, max_seconds=max_seconds))


def measure(name: str, argv: list[str], port: int, key: str, args: argparse.Namespace, workdir: Path) -> float:
    """Instructions per request of the gateway `argv` (listening on `port`) under a bounded load."""
    out = workdir / f"{name}.callgrind"
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv], cwd=ROOT, stdout=log, stderr=log)
    try:
        wait_port(port, timeout=START_SECONDS)
        request = chat_request("127.0.0.1", port, "/v1/chat/completions", "echo", args.stream, key)
        load(port, request, args.concurrency, WARMUP, 300)
        subprocess.run(["callgrind_control", "--zero", str(process.pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = load(port, request, args.concurrency, args.requests, 900)
        before = set(workdir.glob(f"{name}.callgrind*"))
        subprocess.run(["callgrind_control", "--dump", str(process.pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (dumps := set(workdir.glob(f"{name}.callgrind*")) - before) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not dumps or result.errors or not result.count:
            raise RuntimeError(f"{name}: {result.count} requests, {result.errors} errors, dumps {sorted(map(str, dumps))}")
        time.sleep(1)  # the dump is written whole
        per_request = total_instructions(max(dumps, key=lambda path: path.stat().st_mtime)) / result.count
        print(f"{name:24s} {result.count} requests, {per_request:,.0f} instructions/request", flush=True)
        return per_request
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="perg-instructions-"))
    fake, upstream_port = upstream.start()
    try:
        floor_port, proxy_port = free_port(), free_port()
        floor_argv = [
            sys.executable,
            "-m",
            "bench.bare_forwarder",
            "--port",
            str(floor_port),
            "--upstream",
            f"http://127.0.0.1:{upstream_port}",
        ]
        floor = measure("bare aiohttp forwarder", floor_argv, floor_port, "", args, workdir)
        proxy_argv = [
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--config",
            str(proxy_config(workdir / "perg-off.yaml", proxy_port, upstream_port, OFF)),
        ]
        proxy = measure("perg-proxy off", proxy_argv, proxy_port, KEY, args, workdir)
    finally:
        fake.terminate()
        try:
            fake.wait(10)
        except subprocess.TimeoutExpired:
            fake.kill()
            fake.wait()
    kind = "streaming" if args.stream else "plain"
    print(f"{kind}, concurrency {args.concurrency}: perg-proxy off / floor = {proxy / floor:.3f} ({proxy:,.0f} / {floor:,.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("bench/instructions.py needs valgrind (Debian: apt-get install valgrind)")
    run(args)


if __name__ == "__main__":
    main()

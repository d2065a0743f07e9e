"""Benchmark: judging at scale with the shared queue (`monitor.queue: redis`).

    python bench/monitor_scale.py [--redis redis://127.0.0.1:6379/3] [--workers 1,2,4]

A proxy publishes every personalized request it serves (sample rate 1.0) to a Redis stream of this
run's own; 1, 2 and 4 `perg-proxy monitor-worker` processes judge them on the fake upstream,
whose judges answer after `--judge-ms` (200 ms). Each job is a reference call (instant) and three
judge calls (relevance, consistency, follow) in turn, so about 0.6 s; each worker judges
`--concurrency` (4) jobs at once. Verdicts go to one SQLite file.

For each worker count:
  capacity   `--jobs-per-worker` x workers requests are sent at once; the rate at which the
             workers acknowledge them (from 10% to 90% done) is the sampled requests per second
             they can sustain;
  sustained  requests at `--load` (0.8) of that capacity, open loop, for `--seconds` (20): the
             stream's lag (entries never delivered) and pending entries at the start and the end;
             lag that does not grow means the rate is sustained.
Then the request path: p50 / p99 at concurrency 1 of two proxies on the same stream, sample rate
0.0 and 1.0, interleaved (no judging in either: the workers are stopped), and of a third with the
memory queue judging in process at 100%, for comparison. Bounded in requests and time; the stream
is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import KEY, free_port, pin_self, pinned, start_fake, stop, wait_port  # noqa: E402
from bench.common import run as run_async  # noqa: E402
from bench.loadgen import chat_request, run_load  # noqa: E402

EXTENSION = {"personalization": {"preferences": ["Answer in the style of a pirate."]}}


def config(workdir: Path, name: str, upstream_port: int, redis: str, stream: str, args: argparse.Namespace, **monitor: Any) -> Path:
    port = free_port()
    settings = {
        "enabled": True,
        "sample_rate": 1.0,
        "queue": "redis",
        "redis_url": redis,
        "stream": stream,
        "queue_size": 100000,
        "workers": args.concurrency,
        "drain_seconds": 0,
        "claim_after_seconds": 60,
        "judge": {"model": f"delay-{args.judge_ms}", "max_retries": 0},
        "worker": {"port": free_port(), "block_seconds": 0.2},
        **monitor,
    }
    path = workdir / f"{name}.yaml"
    path.write_text(
        json.dumps(
            {
                "server": {"host": "127.0.0.1", "port": port},
                "upstreams": [{"name": "fake", "base_url": f"http://127.0.0.1:{upstream_port}/v1", "api_key": "sk-up"}],
                "personalization": {"default_strategy": "off"},
                "profiles": {"backend": "sqlite", "path": str(workdir / "verdicts.db")},
                "auth": {"client_keys": [KEY], "admin_key": "admin"},
                "logging": {"level": "warning"},
                "monitor": settings,
            }
        )
    )
    return path


def port_of(path: Path, worker: bool = False) -> int:
    data = json.loads(path.read_text())
    return int(data["monitor"]["worker"]["port"] if worker else data["server"]["port"])


def start(command: list[str], log: Path, port: int, cpu: int) -> subprocess.Popen:
    out = log.open("wb")
    process = subprocess.Popen(pinned(cpu, [sys.executable, "-m", "proxy", *command]), cwd=ROOT, stdout=out, stderr=out)
    wait_port(port)
    return process


def worker_metrics(ports: list[int]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for port in ports:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith(("perg_monitor_worker_jobs_total", "perg_monitor_stream_lag ", "perg_monitor_stream_pending ")):
                name, value = line.rsplit(" ", 1)
                totals[name] = max(totals.get(name, 0.0), float(value)) if "stream" in name else totals.get(name, 0.0) + float(value)
    return totals


def acknowledged(ports: list[int]) -> float:
    return worker_metrics(ports).get('perg_monitor_worker_jobs_total{outcome="acknowledged"}', 0.0)


def stream_state(client: Any, stream: str) -> tuple[int, int]:
    """(lag, pending) of the stream's consumer group."""
    for group in client.xinfo_groups(stream):
        if group["name"] in (b"perg-judges", "perg-judges"):
            return int(group.get("lag") or 0), int(group["pending"])
    return 0, 0


async def send(port: int, count: int, concurrency: int) -> None:
    request = chat_request("127.0.0.1", port, "/v1/chat/completions", "echo", False, KEY, EXTENSION)
    result = await run_load("127.0.0.1", port, request, concurrency=concurrency, requests=count, max_seconds=120)
    if result.errors:
        raise RuntimeError(f"{result.errors} errors: {result.error_kinds}")


async def open_loop(port: int, rate: float, seconds: float) -> int:
    """`rate` requests per second for `seconds`, each on its own connection (open loop)."""
    request = chat_request("127.0.0.1", port, "/v1/chat/completions", "echo", False, KEY, EXTENSION)
    sent, tasks = 0, []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        tasks.append(asyncio.ensure_future(run_load("127.0.0.1", port, request, concurrency=1, requests=1, max_seconds=10)))
        sent += 1
        await asyncio.sleep(max(0.0, started + sent / rate - time.perf_counter()))
    results = await asyncio.gather(*tasks)
    errors = sum(result.errors for result in results)
    if errors:
        raise RuntimeError(f"{errors} errors in the open-loop phase")
    return sent


async def scale_run(
    workdir: Path, upstream_port: int, proxy_port: int, redis: str, stream: str, workers: int, args: argparse.Namespace, client: Any
) -> dict[str, float]:
    configs = [config(workdir, f"worker-{workers}-{i}", upstream_port, redis, stream, args) for i in range(workers)]
    ports = [port_of(path, worker=True) for path in configs]
    processes = [
        start(["monitor-worker", "--config", str(path)], workdir / f"{path.stem}.log", port, cpu=1)
        for path, port in zip(configs, ports, strict=True)
    ]
    try:
        # capacity: a backlog of jobs, drained
        jobs = args.jobs_per_worker * workers
        base = acknowledged(ports)
        await send(proxy_port, jobs, 16)
        marks: dict[float, float] = {}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            done = acknowledged(ports) - base
            now = time.perf_counter()
            for share in (0.1, 0.9):
                if share not in marks and done >= share * jobs:
                    marks[share] = now
            if 0.9 in marks:
                break
            await asyncio.sleep(0.1)
        capacity = 0.8 * jobs / (marks[0.9] - marks[0.1])
        while acknowledged(ports) - base < jobs and time.monotonic() < deadline:  # noqa: ASYNC110 - polling other processes
            await asyncio.sleep(0.2)
        # sustained: an open-loop rate under the capacity, lag watched
        rate = args.load * capacity
        lag_start = stream_state(client, stream)
        sender = asyncio.ensure_future(open_loop(proxy_port, rate, args.seconds))
        await asyncio.sleep(5)
        lag_early = stream_state(client, stream)
        sent = await sender
        lag_end = stream_state(client, stream)
        return {
            "workers": workers,
            "capacity_per_s": capacity,
            "offered_per_s": rate,
            "sent": sent,
            "lag_start": lag_start[0],
            "lag_5s": lag_early[0],
            "lag_end": lag_end[0],
            "pending_5s": lag_early[1],
            "pending_end": lag_end[1],
        }
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                stop(process)


async def request_path(ports: dict[str, int], requests: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    model_request = {
        name: chat_request("127.0.0.1", port, "/v1/chat/completions", "echo", False, KEY, EXTENSION) for name, port in ports.items()
    }
    results: dict[str, list[dict[str, float]]] = {}
    for name, port in ports.items():
        await run_load("127.0.0.1", port, model_request[name], concurrency=4, requests=200, max_seconds=60)  # warm-up
    for _ in range(rounds):
        for name, port in ports.items():
            result = await run_load("127.0.0.1", port, model_request[name], concurrency=1, requests=requests // rounds, max_seconds=120)
            if result.errors:
                raise RuntimeError(f"{name}: {result.errors} errors")
            results.setdefault(name, []).append(result.summary())
    return results


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


async def main_async(args: argparse.Namespace) -> tuple[list[dict[str, float]], dict[str, list[dict[str, float]]]]:
    import redis as redis_module

    workdir = Path(tempfile.mkdtemp(prefix="perg-bench-scale-"))
    stream = f"perg:bench:{uuid.uuid4().hex[:8]}"
    client = redis_module.from_url(args.redis)
    fake, upstream_port = start_fake()
    started: list[subprocess.Popen] = []
    try:
        publisher = config(workdir, "proxy", upstream_port, args.redis, stream, args)
        started.append(start(["serve", "--config", str(publisher)], workdir / "proxy.log", port_of(publisher), cpu=0))
        scale = []
        for workers in args.workers:
            row = await scale_run(workdir, upstream_port, port_of(publisher), args.redis, stream, workers, args, client)
            print(json.dumps(row), file=sys.stderr, flush=True)
            scale.append(row)
        client.delete(stream)
        unsampled = config(workdir, "unsampled", upstream_port, args.redis, stream, args, sample_rate=0.0)
        in_process = config(
            workdir, "in-process", upstream_port, args.redis, stream, args, queue="memory", redis_url=None, queue_size=100000
        )
        for path in (unsampled, in_process):
            started.append(start(["serve", "--config", str(path)], workdir / f"{path.stem}.log", port_of(path), cpu=0))
        ports = {
            "redis, sample rate 0": port_of(unsampled),
            "redis, sample rate 1.0": port_of(publisher),
            "memory, 1.0, judged in process": port_of(in_process),
        }
        path = await request_path(ports, args.requests, args.rounds)
        return scale, path
    finally:
        for process in started:
            stop(process)
        stop(fake)
        client.delete(stream, f"{stream}:dead")
        client.close()


def report(scale: list[dict[str, float]], path: dict[str, list[dict[str, float]]], seconds: float) -> None:
    print(
        f"| judge workers | sampled req/s sustained (capacity) | offered for {seconds:g} s | lag at 5 s | lag at the end | pending at the end |"
    )
    print("|---|---|---|---|---|---|")
    for row in scale:
        print(
            f"| {row['workers']} | {row['capacity_per_s']:.1f} | {row['offered_per_s']:.1f} | {row['lag_5s']} | {row['lag_end']} | {row['pending_end']} |"
        )
    print()
    print("| proxy | p50 ms | p99 ms |")
    print("|---|---|---|")
    for name, rows in path.items():
        print(f"| {name} | {median([r['p50_ms'] for r in rows]):.3f} | {median([r['p99_ms'] for r in rows]):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/3")
    parser.add_argument("--workers", type=lambda text: [int(n) for n in text.split(",")], default=[1, 2, 4])
    parser.add_argument("--judge-ms", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4, help="jobs each worker judges at once (monitor.workers)")
    parser.add_argument("--jobs-per-worker", type=int, default=100)
    parser.add_argument("--load", type=float, default=0.8, help="the sustained phase's rate, as a share of the capacity")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=3000, help="per proxy, request-path phase")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pin_self(1)
    scale, path = run_async(main_async(args))
    report(scale, path, args.seconds)


if __name__ == "__main__":
    main()

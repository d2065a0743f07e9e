"""Attacks together against one proxy while a normal client measures itself (issue 11).

For `--seconds` (60 by default): slowloris connections (a header line every second, never the
end), idle kept-alive connections, clients that request a large download and never read it, and
requests answered by a gzip upstream (a small compressed body that inflates a thousandfold), all
at once, with the proxy's default limits. A normal client sends chat requests back to back on
its own connection, first for a baseline without attacks, then through the attacks; it prints its
p50, p99 and error count for both, and what the attackers got.

    .venv/bin/python -m bench.attack_soak [--seconds 60] [--skip gzip,...]

Bounded: a fixed number of attackers of each kind, each reconnecting when cut, all stopped at
the end; the proxy and the upstream are child processes stopped by their PIDs.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from aiohttp import web

from bench.common import KEY, ROOT, free_port, pinned, run, start_proxy, stop, wait_port

SLOWLORIS, IDLE, NON_READERS, GZIP = 300, 300, 24, 2
BOMB = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)  # ~64 KiB sent, 64 MiB inflated
CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hello"}]}'
ANSWER = b'{"id": "c", "object": "chat.completion", "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}'


def upstream_app() -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def bomb(request: web.Request) -> web.Response:
        return web.Response(body=BOMB, headers={"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"})

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        block = b"x" * 65536
        for _ in range(4096):  # 256 MiB at most
            await response.write(block)
        await response.write_eof()
        return response

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/bomb", bomb)
    app.router.add_get("/v1/big", big)
    app.router.add_get("/v1/models", models)
    return app


def request_bytes(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer {KEY}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def slowloris(port: int, end: float, tally: Counter) -> None:
    while time.monotonic() < end:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            tally["slowloris_connect_failed"] += 1
            await asyncio.sleep(0.5)
            continue
        tally["slowloris_connections"] += 1
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        try:
            while time.monotonic() < end:
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                if await _closed(reader, 1.0):
                    tally["slowloris_cut"] += 1
                    break
        except OSError:
            tally["slowloris_cut"] += 1
        writer.close()


async def idle_keepalive(port: int, end: float, tally: Counter) -> None:
    while time.monotonic() < end:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError):
            tally["idle_connect_failed"] += 1
            await asyncio.sleep(0.5)
            continue
        tally["idle_connections"] += 1
        while time.monotonic() < end:
            if await _closed(reader, 1.0):
                tally["idle_closed_by_proxy"] += 1
                break
        writer.close()


async def non_reader(port: int, end: float, tally: Counter) -> None:
    """A large download that is never read, held 20 s (the proxy cuts it after its write timeout;
    the client cannot see that, its own buffers full), then again on a new connection."""
    loop = asyncio.get_running_loop()
    while time.monotonic() < end:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, request_bytes("GET", "/v1/big"))
            tally["non_reader_requests"] += 1
            await asyncio.sleep(min(20.0, max(0.0, end - time.monotonic())))
        except OSError:
            tally["non_reader_connect_failed"] += 1
            await asyncio.sleep(0.5)
        finally:
            sock.close()


async def gzip_client(port: int, end: float, tally: Counter) -> None:
    import httpx2

    async with httpx2.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {KEY}", "Accept-Encoding": "identity"}) as client:
        while time.monotonic() < end:
            try:
                response = await client.get(f"http://127.0.0.1:{port}/v1/bomb")
                tally[f"gzip_status_{response.status_code}"] += 1
                tally["gzip_bytes_on_the_wire"] += response.num_bytes_downloaded  # compressed, as relayed
            except httpx2.HTTPError as error:
                tally[f"gzip_error_{type(error).__name__}"] += 1


async def _closed(reader: asyncio.StreamReader, wait: float) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(65536), wait)
    except TimeoutError:
        return False
    except OSError:
        return True
    return data == b""


async def normal_client(port: int, seconds: float) -> tuple[list[float], Counter]:
    import httpx2

    latencies: list[float] = []
    errors: Counter = Counter()
    end = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    async with httpx2.AsyncClient(timeout=10) as client:
        while time.monotonic() < end:
            started = time.perf_counter()
            try:
                response = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=CHAT, headers=headers)
                if response.status_code != 200:
                    errors[f"status_{response.status_code}"] += 1
            except httpx2.HTTPError as error:
                errors[type(error).__name__] += 1
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)
    return latencies, errors


def figures(name: str, latencies: list[float], errors: Counter) -> str:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000 if len(ordered) >= 100 else ordered[-1] * 1000
    return f"{name:24} requests {len(ordered):>5}  p50 {p50:6.2f} ms  p99 {p99:7.2f} ms  errors {sum(errors.values())} {dict(errors) or ''}"


async def attackers(port: int, seconds: float, skip: set[str]) -> None:
    """The attackers, in a process of their own (so their work does not slow the normal client)."""
    end = time.monotonic() + seconds
    tally: Counter = Counter()
    kinds = {"slowloris": (slowloris, SLOWLORIS), "idle": (idle_keepalive, IDLE), "non_readers": (non_reader, NON_READERS)}
    kinds["gzip"] = (gzip_client, GZIP)
    coroutines = [attack(port, end, tally) for name, (attack, count) in kinds.items() if name not in skip for _ in range(count)]
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    await asyncio.wait(tasks, timeout=seconds + 15)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps(dict(tally)), flush=True)


async def measure(port: int, seconds: float, skip: str) -> None:
    baseline = await normal_client(port, min(10.0, seconds / 6))
    command = [sys.executable, "-m", "bench.attack_soak", "--attack", str(port), "--seconds", str(seconds), "--skip", skip]
    attack = await asyncio.create_subprocess_exec(*command, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    try:
        await asyncio.sleep(2)  # let the attackers connect
        during = await normal_client(port, seconds - 3)
        out, _ = await asyncio.wait_for(attack.communicate(), seconds + 30)
    finally:
        if attack.returncode is None:
            attack.kill()
            await attack.wait()
    tally = json.loads(out.decode().strip().splitlines()[-1])
    print(figures("normal, alone", *baseline))
    print(figures("normal, under attack", *during))
    print("attackers:", ", ".join(f"{key} {value}" for key, value in sorted(tally.items())))
    print("proxy:", ", ".join(await proxy_counts(port)))


async def proxy_counts(port: int) -> list[str]:
    """What the proxy says it cut, from its own metrics."""
    import httpx2

    async with httpx2.AsyncClient(timeout=10) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    wanted = ("perg_connections_refused_total{", 'perg_stream_errors_total{cause="client_write_timeout"')
    return [line for line in text.splitlines() if line.startswith(wanted)]


def serve_upstream(port: int) -> None:
    web.run_app(upstream_app(), host="127.0.0.1", port=port, print=None, access_log=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--skip", default="", help="attacks left out, comma-separated: slowloris, idle, non_readers, gzip")
    parser.add_argument("--attack", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    if args.attack:
        run(attackers(args.attack, args.seconds, set(filter(None, args.skip.split(",")))))
        return
    upstream_port = free_port()
    command = pinned(1, [sys.executable, "-m", "bench.attack_soak", "--serve-upstream", str(upstream_port)])
    upstream = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(upstream_port)
        with tempfile.TemporaryDirectory() as workdir:
            proxy, port = start_proxy(upstream_port, Path(workdir), 'personalization: {default_strategy: "off"}')
            try:
                run(measure(port, args.seconds, args.skip))
                errors = [line for line in (Path(workdir) / "proxy.log").read_bytes().splitlines() if b'"level":"error"' in line]
                print(f"proxy errors logged: {len(errors)}")
            finally:
                stop(proxy)
    finally:
        stop(upstream)


if __name__ == "__main__":
    main()

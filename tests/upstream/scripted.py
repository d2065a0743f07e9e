"""Scripted upstream servers on 127.0.0.1 for the behaviour suite, and the four upstream paths.

`ScriptedServer` is a TCP server whose script writes each answer's bytes itself, so it can do
what a well-behaved HTTP server library will not: close a kept-alive connection just as a request
arrives, write an answer nobody asked for, send a status of 999, stall mid-body, read until close.
It parses only what the script needs of a request (the head and a Content-Length body, as the
proxy's client sends them); it is a test double, not an HTTP implementation the proxy uses.

`PATHS` are the four ways the proxy calls an upstream (pass-through, a stage call, a judge, eval),
each as `await call(client_or_settings, body)`: the same scripted servers run under every one.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.config import Retries, Timeouts, UpstreamSettings
from proxy.errors import CallFailed, ProxyError
from proxy.eval.judging import JudgeServer
from proxy.metrics import private_metrics
from proxy.perg.judges import ask_upstream
from proxy.upstream.client import UpstreamClient


@dataclass
class Request:
    connection: int
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


Script = Callable[[Request, asyncio.StreamWriter], Awaitable[bool]]  # True: keep the connection


@dataclass
class ScriptedServer:
    script: Script
    ssl_context: ssl.SSLContext | None = None
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}/v1"

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self._writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Request(number, method, target, headers, body)
                self.requests.append(request)
                if not await self.script(request, writer):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


def completion(text: str = '{"ok": true}') -> bytes:
    return orjson.dumps(
        {"id": "c1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
    )


def answer(body: bytes, *, status: str = "200 OK", headers: dict[str, str] | None = None, length: bool = True) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Content-Type: application/json"]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes, pieces: int = 3) -> bytes:
    size = max(1, len(body) // pieces)
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"
    return answer(framed, headers={"Transfer-Encoding": "chunked"}, length=False)


def gzipped(body: bytes) -> bytes:
    return answer(gzip.compress(body), headers={"Content-Encoding": "gzip"})


def settings_for(url: str, **overrides: Any) -> UpstreamSettings:
    values: dict[str, Any] = {
        "name": "up",
        "base_url": url,
        "api_key": "sk-upstream-secret-key",
        "timeouts": Timeouts(connect=2, first_byte=5, idle=5, total=10),
        "retries": Retries(max_attempts=3, backoff_seconds=0, retry_on=(408, 409, 429, 500, 502, 503, 504)),
        "max_connections": 4,
        **overrides,
    }
    return UpstreamSettings(**values)


BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def pass_through(client: UpstreamClient, body: dict[str, Any]) -> bytes:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {client.settings.api_key}"}
    async with client.open("POST", "/chat/completions", headers=headers, data=orjson.dumps(body)) as response:
        return await response.read()


async def stage_call(client: UpstreamClient, body: dict[str, Any]) -> bytes:
    result = await client.chat(body, request_id="rid", timeout=client.settings.timeouts.total, stage="stage1")
    return orjson.dumps(result.data)


async def judge_call(client: UpstreamClient, body: dict[str, Any]) -> bytes:
    timeout = client.settings.timeouts.total
    return orjson.dumps(await ask_upstream(client, body, timeout=timeout, retries=client.settings.retries, request_id="judge"))


PATHS: dict[str, Callable[[UpstreamClient, dict[str, Any]], Awaitable[bytes]]] = {
    "pass-through": pass_through,
    "stage": stage_call,
    "judge": judge_call,
}


class Caller:
    """One upstream path on one scripted server: `await caller()` makes one call; `error(...)`
    makes one that must fail and gives the proxy error behind it (a judge's `CallFailed` wraps it)."""

    def __init__(self, path: str, settings: UpstreamSettings) -> None:
        self.path = path
        self.settings = settings
        if path == "eval":
            t, r = settings.timeouts, settings.retries
            network = {key: getattr(settings, key) for key in ("trust_env", "ca_bundle", "client_cert", "client_key")}
            self.server = JudgeServer(
                "up", settings.base_url, settings.api_key, timeout=t.total, attempts=r.max_attempts, backoff_seconds=0, network=network
            )
            self.client = self.server.client
        else:
            self.client = UpstreamClient(settings, private_metrics())

    async def __aenter__(self) -> Caller:
        await self.client.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def __call__(self, body: dict[str, Any] | None = None) -> bytes:
        if self.path == "eval":
            return orjson.dumps(await self.server.ask_json(body or BODY))
        return await PATHS[self.path](self.client, body or BODY)

    async def error(self, body: dict[str, Any] | None = None) -> ProxyError:
        try:
            await self(body)
        except ProxyError as error:
            return error
        except CallFailed as failed:
            assert isinstance(failed.__cause__, ProxyError), failed
            return failed.__cause__
        raise AssertionError("the call did not fail")


ALL_PATHS = ("pass-through", "stage", "judge", "eval")

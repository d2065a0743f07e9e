"""One behaviour suite for every upstream path (pass-through, a stage call, a judge, eval) against
the same scripted servers on 127.0.0.1: the proxy has one HTTP client, and this holds it to one
behaviour (issue 12)."""

from __future__ import annotations

import asyncio
import gzip
import time

import orjson
import pytest

from proxy.errors import UpstreamProtocolError, UpstreamStatusError, UpstreamStreamBroken, UpstreamTimeout, UpstreamUnreachable
from proxy.metrics import private_metrics
from proxy.upstream.client import UpstreamClient
from proxy.upstream.events import UpstreamEventError
from tests.upstream.scripted import ALL_PATHS, BODY, Caller, Request, ScriptedServer, answer, chunked, completion, gzipped, settings_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=ALL_PATHS)
def path(request: pytest.FixtureRequest) -> str:
    return request.param


async def test_keep_alive_connections_are_reused(path):
    async def script(request: Request, writer) -> bool:
        writer.write(answer(completion()))
        return True

    server = await ScriptedServer(script).start()
    try:
        async with Caller(path, settings_for(server.url)) as call:
            for _ in range(3):
                assert b"ok" in await call()
        assert len(server.requests) == 3
        assert server.connections == 1
    finally:
        await server.stop()


async def test_a_post_on_a_connection_that_dies_is_never_sent_twice(path):
    """The second request reaches the server on the kept-alive connection, which closes without
    answering (as a server closing an idle connection just then does): the POST may have started
    a generation, so it is not sent again, even with retries on."""

    async def script(request: Request, writer) -> bool:
        if len(server.requests) == 1:
            writer.write(answer(completion()))
            return True
        return False  # closed, no answer

    server = await ScriptedServer(script).start()
    try:
        async with Caller(path, settings_for(server.url)) as call:
            await call()
            error = await call.error()
        assert isinstance(error, UpstreamUnreachable), error
        assert error.status == 502
        assert len(server.requests) == 2  # one each, never a third
    finally:
        await server.stop()


@pytest.mark.parametrize("framing", ["chunked", "until-close"])
async def test_chunked_and_until_close_bodies_are_read_whole(path, framing):
    async def script(request: Request, writer) -> bool:
        if framing == "chunked":
            writer.write(chunked(completion()))
            return True
        writer.write(answer(completion(), length=False, headers={"Connection": "close"}))
        return False

    server = await ScriptedServer(script).start()
    try:
        async with Caller(path, settings_for(server.url)) as call:
            assert b"ok" in await call()
            assert b"ok" in await call()
    finally:
        await server.stop()


async def test_gzip_is_decoded_for_the_proxy_and_relayed_compressed_on_pass_through(path):
    async def script(request: Request, writer) -> bool:
        seen.append(request.headers.get("accept-encoding"))
        writer.write(gzipped(completion()))
        return True

    seen: list[str | None] = []
    server = await ScriptedServer(script).start()
    try:
        async with Caller(path, settings_for(server.url)) as call:
            body = await call()
        if path == "pass-through":
            assert seen == [None]  # the client asked for no encoding: the proxy asks for none either
            assert gzip.decompress(body) == completion()  # relayed as sent, never inflated
        else:
            assert seen == ["gzip, deflate"]
            assert b"ok" in body
    finally:
        await server.stop()


async def test_an_upstream_silent_mid_body_hits_the_idle_deadline(path):
    async def script(request: Request, writer) -> bool:
        writer.write(answer(completion())[:-5])
        await asyncio.sleep(30)
        return False

    server = await ScriptedServer(script).start()
    try:
        settings = settings_for(server.url, timeouts={"connect": 1, "first_byte": 5, "idle": 0.3, "total": 10})
        if path == "eval":
            settings = settings_for(server.url, timeouts={"connect": 1, "first_byte": 0.3, "idle": 0.3, "total": 0.3})
        async with Caller(path, settings) as call:
            started = time.monotonic()
            error = await call.error()
        assert isinstance(error, UpstreamTimeout | UpstreamStreamBroken), error
        assert time.monotonic() - started < 3
        assert len(server.requests) == 1  # a POST that timed out is not sent again
    finally:
        await server.stop()


async def test_an_upstream_that_trickles_hits_the_total_deadline(path):
    """Never silent for `idle`, but never done: the total deadline ends it."""

    async def script(request: Request, writer) -> bool:
        whole = answer(completion())
        head = whole.index(b"\r\n\r\n") + 4
        writer.write(whole[:head])  # the headers at once, then the body a byte at a time
        for byte in range(head, len(whole) - 1):
            writer.write(whole[byte : byte + 1])
            await writer.drain()
            await asyncio.sleep(0.05)
        return False

    server = await ScriptedServer(script).start()
    try:
        timeouts = {"connect": 1, "first_byte": 5 if path != "eval" else 0.6, "idle": 0.6, "total": 0.6}
        async with Caller(path, settings_for(server.url, timeouts=timeouts)) as call:
            started = time.monotonic()
            error = await call.error()
        assert isinstance(error, UpstreamTimeout), error
        assert 0.5 < time.monotonic() - started < 3
        assert len(server.requests) == 1
    finally:
        await server.stop()


async def test_an_upstream_that_never_answers_hits_the_first_byte_deadline(path):
    async def script(request: Request, writer) -> bool:
        await asyncio.sleep(30)
        return False

    server = await ScriptedServer(script).start()
    try:
        timeouts = {"connect": 1, "first_byte": 0.3, "idle": 0.3, "total": 0.3}
        async with Caller(path, settings_for(server.url, timeouts=timeouts)) as call:
            started = time.monotonic()
            error = await call.error()
        assert isinstance(error, UpstreamTimeout), error
        assert error.status == 504
        assert time.monotonic() - started < 3
        assert len(server.requests) == 1
    finally:
        await server.stop()


async def test_a_status_error_keeps_its_body_and_retry_after_is_honoured(path):
    async def script(request: Request, writer) -> bool:
        if len(server.requests) == 1:
            writer.write(
                answer(b'{"error": {"message": "slow down", "type": "rate_limit"}}', status="429 Too Many", headers={"retry-after": "0.2"})
            )
        elif len(server.requests) == 2:
            writer.write(answer(completion()))
        else:
            writer.write(answer(b'{"error": {"message": "bad field", "type": "invalid_request_error"}}', status="400 Bad Request"))
        return True

    server = await ScriptedServer(script).start()
    try:
        async with Caller(path, settings_for(server.url)) as call:
            started = time.monotonic()
            assert b"ok" in await call()  # the 429 was retried after its retry-after
            assert time.monotonic() - started >= 0.2
            error = await call.error()
        assert isinstance(error, UpstreamStatusError) and error.status == 400, error
        assert error.message == "bad field"
        assert len(server.requests) == 3  # the 400 was final
    finally:
        await server.stop()


async def test_a_5xx_without_an_openai_body_is_described_not_relayed(path):
    async def script(request: Request, writer) -> bool:
        writer.write(answer(b"<html>bad gateway</html>", status="502 Bad Gateway"))
        return True

    server = await ScriptedServer(script).start()
    try:
        async with Caller(path, settings_for(server.url)) as call:
            error = await call.error()
        assert isinstance(error, UpstreamStatusError) and error.status == 502
        assert error.message == "upstream returned 502 with a non-JSON body"
        assert "bad gateway" not in str(error.body())  # the HTML never reaches a client (it is logged)
        assert len(server.requests) == 3  # 502 is in retry_on: every attempt was made
    finally:
        await server.stop()


async def test_a_redirect_is_a_502_that_names_it_and_is_not_followed(path):
    async def script(request: Request, writer) -> bool:
        writer.write(answer(b"", status="307 Temporary Redirect", headers={"Location": "http://127.0.0.1:9/elsewhere"}))
        return True

    server = await ScriptedServer(script).start()
    try:
        async with Caller(path, settings_for(server.url)) as call:
            error = await call.error()
        assert isinstance(error, UpstreamProtocolError) and error.status == 502
        assert "redirect" in error.message and "307" in error.message
        assert "elsewhere" not in error.message and not any(k.lower() == "location" for k in error.headers)
        assert len(server.requests) == 1
    finally:
        await server.stop()


@pytest.mark.parametrize("status", ["999 Odd", "099 Low"])
async def test_a_status_outside_100_to_599_is_a_502(path, status):
    async def script(request: Request, writer) -> bool:
        writer.write(answer(completion(), status=status))
        return True

    server = await ScriptedServer(script).start()
    try:
        async with Caller(path, settings_for(server.url)) as call:
            error = await call.error()
        assert isinstance(error, UpstreamProtocolError) and error.status == 502, error
    finally:
        await server.stop()


async def test_response_headers_are_bounded(path):
    async def script(request: Request, writer) -> bool:
        writer.write(answer(completion(), headers={"X-Huge": "a" * 100_000}))
        return True

    server = await ScriptedServer(script).start()
    try:
        async with Caller(path, settings_for(server.url)) as call:
            error = await call.error()
        assert isinstance(error, UpstreamProtocolError) and error.status == 502, error
    finally:
        await server.stop()


async def test_an_azure_style_base_url_query_is_kept_on_every_call(path):
    async def script(request: Request, writer) -> bool:
        writer.write(answer(completion()))
        return True

    server = await ScriptedServer(script).start()
    try:
        url = f"http://127.0.0.1:{server.port}/openai/deployments/gpt?api-version=2024-10-21"
        async with Caller(path, settings_for(url)) as call:
            await call()
            await call()
        assert [r.target for r in server.requests] == ["/openai/deployments/gpt/chat/completions?api-version=2024-10-21"] * 2
    finally:
        await server.stop()


async def test_the_upstream_key_never_comes_back_in_an_error(path):
    async def script(request: Request, writer) -> bool:
        echoed = request.headers["authorization"]
        body = orjson.dumps({"error": {"message": f"bad key {echoed}", "type": "auth"}})
        writer.write(answer(body, status="401 Unauthorized", headers={"X-Echo": echoed}))
        return True

    server = await ScriptedServer(script).start()
    try:
        async with Caller(path, settings_for(server.url)) as call:
            error = await call.error()
        secret = call.settings.api_key
        assert server.requests[0].headers["authorization"] == f"Bearer {secret}"
        assert secret not in error.message and secret not in orjson.dumps(error.body()).decode()
        assert all(secret not in value for value in error.headers.values())
        assert "[redacted]" in error.message
    finally:
        await server.stop()


async def test_a_cancelled_call_frees_its_connection_slot(path):
    arrived = asyncio.Event()

    async def script(request: Request, writer) -> bool:
        if len(server.requests) == 1:
            arrived.set()
            await asyncio.sleep(30)  # never answers the first
            return False
        writer.write(answer(completion()))
        return True

    server = await ScriptedServer(script).start()
    try:
        async with Caller(path, settings_for(server.url, max_connections=1)) as call:
            hung = asyncio.create_task(call())
            await arrived.wait()
            hung.cancel()
            with pytest.raises(asyncio.CancelledError):
                await hung
            async with asyncio.timeout(3):  # the one slot is free again
                assert b"ok" in await call()
    finally:
        await server.stop()


async def test_bytes_an_upstream_sends_on_an_idle_connection_are_never_an_answer(path):
    """An answer written on a kept-alive connection nobody asked on must not be served to the
    next, unrelated call (issue 11, finding 13)."""

    async def script(request: Request, writer) -> bool:
        writer.write(answer(completion(f'{{"n": {len(server.requests)}}}')))
        if len(server.requests) == 1:
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(answer(completion('{"n": "unsolicited"}')))
        return True

    server = await ScriptedServer(script).start()
    try:
        async with Caller(path, settings_for(server.url)) as call:
            await call()
            await asyncio.sleep(0.2)
            second = await call()
        assert b"unsolicited" not in second
        assert b"2" in second
    finally:
        await server.stop()


async def stream_events(url: str, **overrides) -> list[dict]:
    client = UpstreamClient(settings_for(url, **overrides), private_metrics())
    await client.start()
    try:
        return [event async for event in client.stream_chat(BODY, request_id="rid", timeout=5, stage="stage2")]
    finally:
        await client.close()


def sse_answer(events: bytes, *, encode: bool = False) -> bytes:
    headers = {"Content-Type": "text/event-stream"}
    if encode:
        return answer(gzip.compress(events), headers={**headers, "Content-Encoding": "gzip"})
    return answer(events, headers=headers)


@pytest.mark.parametrize("encode", [False, True])
async def test_a_stage_stream_ends_only_at_its_done_event(encode):
    events = b'data: {"choices": [{"delta": {"content": "data: [DONE]"}}]}\n\ndata: {"choices": []}\n\n'

    async def script(request: Request, writer) -> bool:
        body = events + (b"data: [DONE]\n\n" if len(server.requests) > 1 else b"")
        writer.write(sse_answer(body, encode=encode))
        return True

    server = await ScriptedServer(script).start()
    try:
        with pytest.raises(UpstreamEventError, match="without"):
            await stream_events(server.url)
        got = await stream_events(server.url)
        assert got[0]["choices"][0]["delta"]["content"] == "data: [DONE]" and len(got) == 2
    finally:
        await server.stop()


async def test_a_stage_streams_error_event_never_carries_the_key():
    async def script(request: Request, writer) -> bool:
        key = request.headers["authorization"]
        writer.write(sse_answer(b'event: error\ndata: {"error": {"message": "bad %s"}}\n\n' % key.encode()))
        return True

    server = await ScriptedServer(script).start()
    try:
        with pytest.raises(UpstreamEventError) as raised:
            await stream_events(server.url)
        assert "sk-upstream-secret-key" not in raised.value.message and "[redacted]" in raised.value.message
    finally:
        await server.stop()


def test_the_base_urls_query_comes_before_the_clients():
    client = UpstreamClient(settings_for("https://x.example/openai/deployments/d/?api-version=1"), private_metrics())
    assert str(client.url("/files", "limit=3")) == "https://x.example/openai/deployments/d/files?api-version=1&limit=3"
    assert str(client.url("/files")) == "https://x.example/openai/deployments/d/files?api-version=1"
    plain = UpstreamClient(settings_for("http://127.0.0.1:1/v1"), private_metrics())
    assert str(plain.url("/models", "a=%2F")) == "http://127.0.0.1:1/v1/models?a=%2F"


async def test_a_relayed_stream_that_never_pauses_is_cut_at_the_total_deadline():
    """Bytes already in are relayed without waiting (no timer is armed for them), yet the total
    deadline still holds: a reader that always finds more buffered is stopped once it passes."""
    event = b'data: {"choices": [{"index": 0, "delta": {"content": "' + b"x" * 4000 + b'"}}]}\n\n'

    async def script(request: Request, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        ends = time.monotonic() + 5
        while time.monotonic() < ends:
            writer.write(event * 16)
            await writer.drain()
        return False

    server = await ScriptedServer(script).start()
    client = UpstreamClient(settings_for(server.url, timeouts={"connect": 1, "first_byte": 2, "idle": 2, "total": 0.5}), private_metrics())
    await client.start()
    try:
        response = await client.send("POST", "/chat/completions", headers={"Content-Type": "application/json"}, data=orjson.dumps(BODY))
        started, relayed = time.monotonic(), 0
        with pytest.raises(UpstreamStreamBroken, match="timed out"):
            try:
                async for chunk in response.chunks():
                    relayed += len(chunk)
                    await asyncio.sleep(0.005)  # a consumer that awaits (a client write): by its next read, more has arrived
            finally:
                response.close()
        assert relayed > 0 and time.monotonic() - started < 2
    finally:
        await client.close()
        await server.stop()

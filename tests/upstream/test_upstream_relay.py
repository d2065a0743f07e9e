"""What the proxy relays from an upstream, end to end through a running proxy (issue 11's
upstream-side findings): streams end only at a `[DONE]` event, compressed answers stay
compressed, a non-JSON 200 is a 502, a redirect is a 502 without its Location, the extension
never goes upstream in a pass-through body."""

from __future__ import annotations

import gzip

import httpx2
import orjson
import pytest
from aiohttp import web

from tests.conftest import CLIENT_KEY, UPSTREAM_KEY

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}", "X-Perg-Strategy": "off"}


def chat(proxy, model: str, **extra) -> httpx2.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx2.post(f"{proxy.base_url}/chat/completions", json=body, headers=AUTH, timeout=10)


def events_of(text: str) -> list[str]:
    return [block for block in text.split("\n\n") if block.strip()]


@pytest.mark.parametrize(
    "stream",
    [
        b'data: {"choices": [{"index": 0, "delta": {"content": "data: [DONE]"}}]}\n\n',  # [DONE] inside the text
        b': data: [DONE]\n\ndata: {"choices": []}\n\n',  # in a comment
        b"data: [DONE]\ndata: more\n\n",  # not the whole data of its event
        b'data: {"choices": []}\n\ndata: [DONE]',  # no blank line: the event never ended
    ],
)
def test_a_stream_that_closes_without_a_done_event_ends_with_an_error_event(proxy, fake_upstream, stream):
    fake_upstream.scripts["sse"] = lambda body: web.Response(body=stream, content_type="text/event-stream")
    response = chat(proxy, "script:sse", stream=True)
    assert response.status_code == 200
    blocks = events_of(response.text)
    assert blocks[-1] == "data: [DONE]"
    assert blocks[-2].startswith("event: error")
    assert "upstream_stream_incomplete" in blocks[-2]


@pytest.mark.parametrize("done", [b"data: [DONE]\n\n", b"data:[DONE]\r\n\r\n"])
def test_a_done_event_ends_the_stream_and_nothing_after_it_is_relayed(proxy, fake_upstream, done):
    stream = b'data: {"choices": []}\n\n' + done + b'data: {"after": "done"}\n\n'
    fake_upstream.scripts["sse"] = lambda body: web.Response(body=stream, content_type="text/event-stream")
    response = chat(proxy, "script:sse", stream=True)
    assert "error" not in response.text and "after" not in response.text
    assert response.text.startswith('data: {"choices": []}')


def test_a_gzip_answer_is_relayed_compressed(proxy, fake_upstream):
    payload = orjson.dumps(
        {"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "z" * 5000}}]}
    )
    fake_upstream.scripts["gz"] = lambda body: web.Response(
        body=gzip.compress(payload), headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
    )
    with httpx2.Client(timeout=10) as client:
        body = {"model": "script:gz", "messages": [{"role": "user", "content": "hi"}]}
        request = client.build_request("POST", f"{proxy.base_url}/chat/completions", json=body, headers={**AUTH, "Accept-Encoding": "gzip"})
        response = client.send(request, stream=True)
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip"
    assert gzip.decompress(raw) == payload  # the proxy's bytes are the upstream's: never inflated
    assert len(raw) < len(payload) / 10
    assert fake_upstream.received[-1].headers.get("Accept-Encoding") == "gzip"


def test_a_200_that_is_not_json_on_an_off_chat_request_is_a_502(proxy, fake_upstream):
    fake_upstream.scripts["html"] = lambda body: web.Response(text="<html>maintenance</html>", content_type="text/html")
    response = chat(proxy, "script:html")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "bad_upstream_response"


def test_an_upstream_redirect_is_a_502_without_its_location(proxy, fake_upstream):
    fake_upstream.scripts["moved"] = lambda body: web.Response(status=307, headers={"Location": "http://127.0.0.1:9/steal"})
    response = chat(proxy, "script:moved")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_redirect" and "redirect" in error["message"]
    assert "location" not in response.headers and "steal" not in response.text
    assert len(fake_upstream.received) == 1


def test_the_extension_never_goes_upstream_in_a_pass_through_body(proxy, fake_upstream):
    body = {"model": "m", "input": "x", "personalization": {"preferences": ["a secret preference"]}}
    response = httpx2.post(f"{proxy.base_url}/embeddings", json=body, headers=AUTH, timeout=10)
    assert response.status_code == 200
    sent = fake_upstream.received[-1]
    assert sent.path == "/v1/embeddings"
    assert b"a secret preference" not in sent.body and orjson.loads(sent.body) == {"model": "m", "input": "x"}


@pytest.mark.parametrize("status", ["200", "400"])
def test_an_upstream_echoing_the_proxys_key_never_hands_it_to_the_client(proxy, fake_upstream, status):
    """The fake upstream's catch-all route echoes the request's headers, the proxy's upstream key
    among them: relayed whole (200) or as an error (400), the key is redacted."""
    response = httpx2.get(f"{proxy.base_url}/echo-me?status={status}", headers=AUTH, timeout=10)
    assert response.status_code == int(status)
    assert fake_upstream.received[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert UPSTREAM_KEY not in response.text
    if status == "200":
        assert "[redacted]" in response.text


def test_a_streamed_download_keeps_its_content_type(proxy, fake_upstream):
    with httpx2.stream("GET", f"{proxy.base_url}/files/f1/content?size=3000000", headers=AUTH, timeout=30) as response:
        body = b"".join(response.iter_bytes())
    assert len(body) == 3_000_000
    assert not response.headers["content-type"].startswith("text/event-stream"), response.headers["content-type"]


def test_a_streamed_chat_request_asks_for_uncompressed_events(proxy, fake_upstream):
    response = chat(proxy, "echo", stream=True)
    assert response.text.rstrip().endswith("data: [DONE]")
    assert "accept-encoding" not in {name.lower() for name in fake_upstream.received[-1].headers}


def test_a_compressed_event_stream_is_relayed_as_bytes_untouched(proxy, fake_upstream):
    events = b'data: {"choices": []}\n\ndata: [DONE]\n\n'
    fake_upstream.scripts["gzsse"] = lambda body: web.Response(
        body=gzip.compress(events), headers={"Content-Encoding": "gzip", "Content-Type": "text/event-stream"}
    )
    response = chat(proxy, "script:gzsse", stream=True)  # an upstream that compresses unasked
    assert response.headers["content-encoding"] == "gzip"
    assert response.content == events  # inflated by the client, not by the proxy; nothing appended


async def test_an_in_process_answer_is_read_whole_only_up_to_a_bound(monkeypatch):
    """The monitor's and eval's in-process answers read a body without a length whole: bounded."""
    from multidict import CIMultiDict

    from proxy.errors import UpstreamProtocolError
    from proxy.pipeline import inprocess
    from proxy.turn import StreamReply

    async def endless():
        while True:
            yield b"x" * 1024

    closed = []

    async def close() -> None:
        closed.append(True)

    monkeypatch.setattr(inprocess, "READ_LIMIT", 64 * 1024)
    with pytest.raises(UpstreamProtocolError, match="larger than"):
        await inprocess.read_whole(StreamReply(200, CIMultiDict(), endless(), close))
    assert closed == [True]

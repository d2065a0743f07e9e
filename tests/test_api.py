"""End to end through the official openai SDK (sync and async, streaming and not), fake upstream."""

from __future__ import annotations

import asyncio
import json

import httpx2
import openai
import pytest

from tests.conftest import CLIENT_KEY, free_port, wait_for

TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    }
]


def client(proxy, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0, **kwargs)


def async_client(proxy, **kwargs) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0, **kwargs)


def test_sync_completion_identical_content_and_extra_fields(proxy, fake_upstream):
    with client(proxy) as c:
        raw = c.chat.completions.with_raw_response.create(
            model="echo", messages=[{"role": "user", "content": "hello proxy"}], logprobs=True
        )
    completion = raw.parse()
    assert completion.choices[0].message.content == "hello proxy"
    assert completion.system_fingerprint == "fp_fake"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert completion.choices[0].logprobs.content[0].token == "hi"
    assert completion.model_extra["x_fake_extension"] == {"kept": True}
    assert raw.headers["x-perg-strategy"] == "off"
    assert raw.headers["x-perg-aligned"] == "false"
    assert float(raw.headers["x-perg-overhead-ms"]) >= 0
    assert raw.headers["x-upstream-request-id"] == "up-" + raw.headers["x-request-id"]


async def test_async_completion(proxy, fake_upstream):
    async with async_client(proxy) as c:
        completion = await c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "async hi"}])
    assert completion.choices[0].message.content == "async hi"


def test_every_request_field_travels_untouched(proxy, fake_upstream):
    with client(proxy) as c:
        c.chat.completions.create(
            model="echo",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            tools=TOOLS,
            tool_choice="auto",
            response_format={"type": "json_object"},
            n=2,
            logprobs=True,
            top_logprobs=2,
            seed=7,
            temperature=0.25,
            stream_options=None,
            extra_body={"unknown_field": {"nested": [1, 2.50, "x"]}, "top_k": 3},
        )
    sent = fake_upstream.chat_bodies()[-1]
    assert sent["tools"] == TOOLS
    assert sent["tool_choice"] == "auto"
    assert sent["response_format"] == {"type": "json_object"}
    assert (sent["n"], sent["logprobs"], sent["top_logprobs"], sent["seed"], sent["temperature"]) == (2, True, 2, 7, 0.25)
    assert sent["unknown_field"] == {"nested": [1, 2.5, "x"]}
    assert sent["top_k"] == 3


def test_request_bytes_forwarded_exactly(proxy, fake_upstream):
    body = b'{"model":"echo","messages":[{"role":"user","content":"x"}],"temperature":1.000,"weird":1e2}'
    response = httpx2.post(
        f"{proxy.base_url}/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    assert fake_upstream.received[-1].body == body


@pytest.mark.parametrize("use_async", [False, True])
def test_streaming_content_and_usage(proxy, fake_upstream, use_async):
    kwargs = dict(
        model="echo",
        messages=[{"role": "user", "content": "stream me please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    if use_async:

        async def run():
            async with async_client(proxy) as c:
                return [chunk async for chunk in await c.chat.completions.create(**kwargs)]

        chunks = asyncio.run(run())
    else:
        with client(proxy) as c:
            chunks = list(c.chat.completions.create(**kwargs))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "stream me please"
    assert {ch.id for ch in chunks} == {"chatcmpl-fake"}
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_tool_calls_identical_streamed_and_not(proxy, fake_upstream):
    with client(proxy) as c:
        whole = c.chat.completions.create(model="tool-call", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS)
        calls: dict[int, dict] = {}
        for chunk in c.chat.completions.create(
            model="tool-call", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS, stream=True
        ):
            for delta in chunk.choices[0].delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = delta.id or entry["id"]
                if delta.function:
                    entry["name"] += delta.function.name or ""
                    entry["arguments"] += delta.function.arguments or ""
    expected = [(t.id, t.function.name, t.function.arguments) for t in whole.choices[0].message.tool_calls]
    assert whole.choices[0].finish_reason == "tool_calls"
    assert [(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())] == expected
    assert json.loads(expected[0][2]) == {"city": "Paris"}


ERROR_CLASSES = [
    (400, openai.BadRequestError),
    (401, openai.AuthenticationError),
    (403, openai.PermissionDeniedError),
    (404, openai.NotFoundError),
    (409, openai.ConflictError),
    (422, openai.UnprocessableEntityError),
    (429, openai.RateLimitError),
    (500, openai.InternalServerError),
    (503, openai.InternalServerError),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("status", "exception"), ERROR_CLASSES)
def test_upstream_status_kept(proxy, fake_upstream, status, exception, stream):
    with client(proxy) as c, pytest.raises(exception) as caught:
        c.chat.completions.create(model=f"error-{status}", messages=[{"role": "user", "content": "x"}], stream=stream)
    error = caught.value
    assert error.status_code == status
    assert error.body["message"] == f"scripted error {status}"
    assert error.body["code"] == f"fake_{status}"
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    if status == 429:
        assert error.response.headers["retry-after"] == "7"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("model", "status", "kind"),
    [
        ("error-html", 502, "a non-JSON body"),
        ("error-text", 500, "a non-JSON body"),
        ("error-traceback", 500, "a stack trace in its error message"),
        ("error-detail", 404, "a JSON body that is not an OpenAI error"),
    ],
)
def test_upstream_error_without_openai_body_is_wrapped(proxy, fake_upstream, capsys, model, status, kind, stream):
    """The status is kept, the body replaced by the OpenAI shape with a short message; the
    original goes to the log, never to the client."""
    with client(proxy) as c, pytest.raises(openai.APIStatusError) as caught:
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], stream=stream)
    assert caught.value.status_code == status
    body = json.loads(caught.value.response.content)
    assert body == {
        "error": {
            "message": f"upstream returned {status} with {kind}",
            "type": "upstream_error",
            "param": None,
            "code": f"upstream_http_{status}",
        }
    }
    logged = capsys.readouterr().out
    assert "upstream_error_body" in logged and "Bad gateway" not in logged and "/srv/app" not in logged  # content: not by default


def test_with_log_content_the_unrelayed_body_is_logged(start_proxy, fake_upstream, capsys):
    proxy = start_proxy(logging={"log_content": True})
    with client(proxy) as c, pytest.raises(openai.InternalServerError) as caught:
        c.chat.completions.create(model="error-text", messages=[{"role": "user", "content": "x"}])
    assert "Traceback" not in caught.value.response.text
    logged = capsys.readouterr().out
    assert "upstream_error_body" in logged and "Traceback (most recent call last)" in logged and "/srv/app/llama_cpp" in logged


def test_upstream_unreachable_is_502(start_proxy):
    proxy = start_proxy(f"http://127.0.0.1:{free_port()}/v1")
    with client(proxy) as c, pytest.raises(openai.APIStatusError) as caught:
        c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_unreachable"


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_timeout_is_504(start_proxy, fake_upstream, stream):
    proxy = start_proxy(upstreams=[{"name": "main", "base_url": fake_upstream.url, "timeouts": {"first_byte": 0.3}}])
    with client(proxy) as c, pytest.raises(openai.APIStatusError) as caught:
        c.chat.completions.create(model="slow-3000", messages=[{"role": "user", "content": "x"}], stream=stream)
    assert caught.value.status_code == 504
    assert caught.value.body["code"] == "upstream_timeout"


def test_stream_that_breaks_ends_with_in_band_error(proxy, fake_upstream):
    with client(proxy) as c:
        stream = c.chat.completions.create(model="stream-break", messages=[{"role": "user", "content": "abcdefghi"}], stream=True)
        received = []
        with pytest.raises(openai.APIError) as caught:
            for chunk in stream:
                received.append(chunk)
    assert len(received) == 2
    assert "broke" in caught.value.message
    assert wait_for(lambda: proxy.metric("perg_stream_errors_total", {"cause": "upstream_stream_broken"}) == 1)


def test_stream_without_done_is_an_error_not_a_clean_end(proxy, fake_upstream):
    raw = _raw_stream(proxy, "stream-no-done")
    assert b"event: error" in raw
    assert raw.index(b"event: error") > raw.index(b'"finish_reason":"stop"')
    assert raw.endswith(b"data: [DONE]\n\n")
    assert raw.count(b"data: [DONE]") == 1


def test_stalled_stream_hits_idle_timeout(start_proxy, fake_upstream):
    proxy = start_proxy(upstreams=[{"name": "main", "base_url": fake_upstream.url, "timeouts": {"idle": 0.5}}])
    raw = _raw_stream(proxy, "stream-stall")
    assert raw.count(b"data: {") == 2  # the one chunk, then the error event
    assert b'"code":"upstream_stream_broken"' in raw


def _raw_stream(proxy, model: str) -> bytes:
    response = httpx2.post(
        f"{proxy.base_url}/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "abcdef"}], "stream": True},
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        timeout=10,
    )
    assert response.status_code == 200
    return response.content


async def test_client_disconnect_cancels_upstream(proxy, fake_upstream):
    for stream in (False, True):
        fake_upstream.cancelled.clear()
        async with async_client(proxy, timeout=0.5) as c:
            with pytest.raises(openai.APITimeoutError):
                await c.chat.completions.create(model="hang", messages=[{"role": "user", "content": "x"}], stream=stream)
        for _ in range(100):
            if fake_upstream.cancelled:
                break
            await asyncio.sleep(0.05)
        assert fake_upstream.cancelled == ["hang"], f"stream={stream}"


def test_models_list_and_passthrough_embeddings(proxy, fake_upstream):
    with client(proxy) as c:
        models = c.models.list()
        embedding = c.embeddings.create(model="embed-model", input="hello")
    assert [m.id for m in models.data] == ["echo", "tool-call", "slow-100"]
    assert embedding.data[0].embedding == [0.1, -0.2, 0.3]
    sent = fake_upstream.received[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/embeddings")
    assert sent.json["model"] == "embed-model" and sent.json["input"] == "hello"

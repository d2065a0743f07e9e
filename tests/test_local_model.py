"""End to end on the real local model (SmolLM2-135M via llama_cpp.server), through the proxy.

The model is weak, so these assert behaviour (what a user sees through the proxy equals what the
upstream gives directly; valid responses; errors mapped), never accuracy.
"""

from __future__ import annotations

import asyncio

import openai
import pytest

from proxy.local_model import MODEL_ALIAS
from tests.conftest import CLIENT_KEY

pytestmark = pytest.mark.local_model
QUESTION = [{"role": "user", "content": "Name the capital of France in one word."}]
DETERMINISTIC = {"temperature": 0, "seed": 1, "max_tokens": 24}


@pytest.fixture
def real_proxy(start_proxy, local_model):
    return start_proxy(local_model.base_url)


def direct(local_model) -> openai.OpenAI:
    return openai.OpenAI(base_url=local_model.base_url, api_key="none", max_retries=0)


def via(proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=60)


def test_models_list_through_proxy(real_proxy):
    with via(real_proxy) as c:
        assert [m.id for m in c.models.list().data] == [MODEL_ALIAS]


def test_completion_identical_to_direct(real_proxy, local_model):
    with direct(local_model) as d, via(real_proxy) as p:
        expected = d.chat.completions.create(model=MODEL_ALIAS, messages=QUESTION, **DETERMINISTIC)
        raw = p.chat.completions.with_raw_response.create(model=MODEL_ALIAS, messages=QUESTION, **DETERMINISTIC)
    got = raw.parse()
    assert got.choices[0].message.content == expected.choices[0].message.content
    assert got.choices[0].message.content.strip()
    assert got.usage.total_tokens == expected.usage.total_tokens
    assert raw.headers["x-perg-strategy"] == "off"


def test_streaming_identical_to_direct(real_proxy, local_model):
    with direct(local_model) as d, via(real_proxy) as p:
        expected = "".join(
            ch.choices[0].delta.content or ""
            for ch in d.chat.completions.create(model=MODEL_ALIAS, messages=QUESTION, stream=True, **DETERMINISTIC)
            if ch.choices
        )
        chunks = list(p.chat.completions.create(model=MODEL_ALIAS, messages=QUESTION, stream=True, **DETERMINISTIC))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == expected
    assert len({ch.id for ch in chunks}) == 1
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_async_streaming_and_not(real_proxy):
    async def run():
        async with openai.AsyncOpenAI(base_url=real_proxy.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=60) as c:
            whole = await c.chat.completions.create(model=MODEL_ALIAS, messages=QUESTION, **DETERMINISTIC)
            parts = [ch async for ch in await c.chat.completions.create(model=MODEL_ALIAS, messages=QUESTION, stream=True, **DETERMINISTIC)]
        return whole, parts

    whole, parts = asyncio.run(run())
    assert whole.choices[0].message.content.strip()
    assert "".join(ch.choices[0].delta.content or "" for ch in parts if ch.choices) == whole.choices[0].message.content


TOO_LONG = [{"role": "user", "content": "word " * 5000}]


def test_upstream_error_keeps_status_and_body(real_proxy):
    with via(real_proxy) as p, pytest.raises(openai.BadRequestError) as caught:
        p.chat.completions.create(model=MODEL_ALIAS, messages=TOO_LONG, max_tokens=5)
    assert caught.value.status_code == 400
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"


def test_upstream_stream_that_dies_is_an_error_not_an_empty_answer(real_proxy):
    # Streaming, llama_cpp.server answers this with a 200 and an empty event stream (no [DONE]).
    with via(real_proxy) as p, pytest.raises(openai.APIError) as caught:
        list(p.chat.completions.create(model=MODEL_ALIAS, messages=TOO_LONG, max_tokens=5, stream=True))
    assert caught.value.code == "upstream_stream_incomplete"


def test_upstream_500_stays_500(real_proxy):
    # llama_cpp.server answers a field it cannot parse with a 500; the proxy keeps it.
    with via(real_proxy) as p, pytest.raises(openai.InternalServerError) as caught:
        p.chat.completions.create(model=MODEL_ALIAS, messages=QUESTION, extra_body={"min_p": "not-a-number"})
    assert caught.value.status_code == 500


def test_proxy_validation_error_before_upstream(real_proxy):
    with via(real_proxy) as p, pytest.raises(openai.BadRequestError) as caught:
        p.chat.completions.create(model=MODEL_ALIAS, messages=QUESTION, n="2")  # type: ignore[arg-type]
    assert caught.value.body["param"] == "n"


def test_wrong_key_on_real_path(real_proxy):
    with openai.OpenAI(base_url=real_proxy.base_url, api_key="wrong", max_retries=0) as c, pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model=MODEL_ALIAS, messages=QUESTION)

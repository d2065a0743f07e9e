"""Requests adapted to what each upstream accepts (proxy/upstream/adapt.py): `response_format:
json_schema` in the upstream's own constrained-JSON form, `max_completion_tokens` as `max_tokens`.

The fake upstream answers `json_schema` with a 500 here, as llama_cpp.server does, so a request
that is not adapted fails visibly."""

from __future__ import annotations

import httpx2
import openai
import orjson
import pytest
from pydantic import BaseModel

from proxy.upstream.adapt import OPENAI, ChatDialect, adapt_chat_body
from tests.conftest import CLIENT_KEY, wait_for

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}
LLAMA = ChatDialect("json_object_schema", "max_tokens")


class City(BaseModel):
    city: str
    population: int


# the pure function


def test_a_body_that_needs_nothing_is_the_same_object():
    body = {"model": "m", "messages": [], "max_tokens": 5, "response_format": {"type": "json_object"}}
    assert adapt_chat_body(body, LLAMA) is body
    rich = {**body, "response_format": JSON_SCHEMA, "max_completion_tokens": 9}
    assert adapt_chat_body(rich, OPENAI) is rich
    assert adapt_chat_body(rich, ChatDialect("none", "max_completion_tokens")) is rich


def test_json_schema_in_each_style_and_the_input_untouched():
    body = {"model": "m", "messages": [], "response_format": JSON_SCHEMA}
    snapshot = orjson.dumps(body)
    assert adapt_chat_body(body, LLAMA)["response_format"] == {"type": "json_object", "schema": SCHEMA}
    assert adapt_chat_body(body, ChatDialect("json_object"))["response_format"] == {"type": "json_object"}
    assert adapt_chat_body(body, ChatDialect("json_schema", "max_tokens")) is body
    no_schema = {"model": "m", "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}
    assert adapt_chat_body(no_schema, LLAMA)["response_format"] == {"type": "json_object"}
    assert orjson.dumps(body) == snapshot


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_completion_tokens": 8}, {"max_tokens": 8}),
        ({"max_completion_tokens": 8, "max_tokens": 20}, {"max_tokens": 8}),
        ({"max_completion_tokens": 30, "max_tokens": 20}, {"max_tokens": 20}),
        ({"max_completion_tokens": None}, {}),
        ({"max_completion_tokens": None, "max_tokens": 4}, {"max_tokens": 4}),
    ],
)
def test_max_completion_tokens_as_max_tokens(fields, expected):
    body = {"model": "m", "messages": [], **fields}
    adapted = adapt_chat_body(body, LLAMA)
    assert {key: adapted[key] for key in ("max_tokens", "max_completion_tokens") if key in adapted} == expected
    assert body == {"model": "m", "messages": [], **fields}


# through the proxy, on the scripted fake upstream


def city_script(body: dict) -> str:
    return orjson.dumps({"city": "Paris", "population": 2100000}).decode()


@pytest.fixture
def llama_like(start_proxy, fake_upstream):
    fake_upstream.rejected_styles.add("json_schema")
    fake_upstream.scripts["city"] = city_script

    def start(strategy: str = "off", **upstream):
        settings = {"structured_output": "json_object_schema", "max_tokens_parameter": "max_tokens", **upstream}
        return start_proxy(
            upstreams=[{"name": "main", "base_url": fake_upstream.url, **settings}], personalization={"default_strategy": strategy}
        )

    return start


def sdk(proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)


@pytest.mark.parametrize("strategy", ["off", "naive", "pref_aligner"])
def test_parse_works_on_an_upstream_without_json_schema(llama_like, fake_upstream, strategy):
    proxy = llama_like(strategy)
    with sdk(proxy) as client:
        raw = client.chat.completions.with_raw_response.parse(
            model="script:city",
            messages=[{"role": "user", "content": "Which city?"}],
            response_format=City,
            max_completion_tokens=50,
            extra_headers={"X-Perg-Preferences": '["Answer like a pirate."]'},
        )
    completion = raw.parse()
    assert completion.choices[0].message.parsed == City(city="Paris", population=2100000)
    assert raw.headers["x-perg-aligned"] == ("true" if strategy == "naive" else "false")  # a JSON answer is never rewritten
    (sent,) = fake_upstream.chat_bodies("chat")
    assert sent["response_format"]["type"] == "json_object"
    assert sent["response_format"]["schema"]["required"] == ["city", "population"]
    assert sent["max_tokens"] == 50 and "max_completion_tokens" not in sent
    assert not fake_upstream.chat_bodies("aligner")


@pytest.mark.parametrize("strategy", ["off", "pref_aligner"])
def test_streamed_json_schema_request_is_adapted(llama_like, fake_upstream, strategy):
    proxy = llama_like(strategy)
    with sdk(proxy) as client:
        stream = client.chat.completions.create(
            model="script:city",
            messages=[{"role": "user", "content": "Which city?"}],
            response_format=JSON_SCHEMA,
            max_completion_tokens=50,
            stream=True,
            extra_body={"personalization": {"preferences": ["Answer like a pirate."]}},
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert City.model_validate_json(text) == City(city="Paris", population=2100000)
    (sent,) = fake_upstream.chat_bodies("chat")
    assert sent["response_format"] == {"type": "json_object", "schema": SCHEMA} and sent["max_tokens"] == 50


def test_a_body_with_nothing_to_adapt_crosses_as_its_bytes(llama_like, fake_upstream):
    proxy = llama_like()
    raw = b'{ "model" : "echo",\n  "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3 }'
    response = httpx2.post(
        f"{proxy.base_url}/chat/completions",
        content=raw,
        headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200
    assert fake_upstream.received[-1].body == raw


def test_an_openai_style_upstream_gets_the_request_as_sent(start_proxy, fake_upstream):
    proxy = start_proxy(upstreams=[{"name": "main", "base_url": fake_upstream.url, "structured_output": "json_schema"}])
    fake_upstream.scripts["city"] = city_script
    with sdk(proxy) as client:
        completion = client.chat.completions.parse(
            model="script:city", messages=[{"role": "user", "content": "Which city?"}], response_format=City, max_completion_tokens=50
        )
    assert completion.choices[0].message.parsed is not None
    (sent,) = fake_upstream.chat_bodies("chat")
    assert sent["response_format"]["type"] == "json_schema" and sent["max_completion_tokens"] == 50 and "max_tokens" not in sent


def test_json_object_style_asks_for_json_without_the_schema(llama_like, fake_upstream):
    proxy = llama_like(structured_output="json_object")
    with sdk(proxy) as client:
        client.chat.completions.parse(model="script:city", messages=[{"role": "user", "content": "Which city?"}], response_format=City)
    assert fake_upstream.chat_bodies("chat")[0]["response_format"] == {"type": "json_object"}


def test_after_a_probed_mismatch_the_working_style_is_used(start_proxy, fake_upstream):
    """An OpenAI-like upstream left at the default style (json_object_schema), which it rejects:
    once the start-up probe has found json_schema working, a client's json_schema goes as sent."""
    fake_upstream.rejected_styles.add("json_object_schema")
    fake_upstream.scripts["city"] = city_script
    proxy = start_proxy()
    probed = lambda: httpx2.get(proxy.url + "/readyz", timeout=10).json()["structured_output"]["main"]  # noqa: E731
    assert wait_for(lambda: probed()["result"] != "pending")
    assert probed() == {"style": "json_object_schema", "result": "mismatch", "suggested": "json_schema"}
    with sdk(proxy) as client:
        completion = client.chat.completions.parse(
            model="script:city", messages=[{"role": "user", "content": "Which city?"}], response_format=City
        )
    assert completion.choices[0].message.parsed == City(city="Paris", population=2100000)
    assert fake_upstream.chat_bodies("chat")[0]["response_format"]["type"] == "json_schema"

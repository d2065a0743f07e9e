"""`POST /v1/responses` through the pipeline, on the scripted fake upstream: its native Responses
endpoint and, with `responses_api: via_chat`, its chat completions. Driven by the openai SDK's
Responses client where the events' parsing matters, by raw HTTP where the bytes do."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import orjson
import pytest

from proxy.server.services import SERVICES
from proxy.upstream.events import EventParser
from tests.conftest import CLIENT_KEY, UPSTREAM_KEY, wait_for

STYLE = "Answer in the style of a pirate."
QUESTION = "What is the capital of France?"
MODES = ("native", "via_chat")
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def upstreams(fake: Any, mode: str | None) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {"name": "main", "base_url": fake.url, "api_key": UPSTREAM_KEY}
    if mode is not None:
        entry["responses_api"] = mode
    return [entry]


@pytest.fixture
def start(start_proxy, fake_upstream):
    def run(mode: str = "native", strategy: str = "off", **sections: Any):
        if mode == "via_chat":
            fake_upstream.responses_native = False
        personalization = {"default_strategy": strategy, **sections.pop("personalization", {})}
        return start_proxy(upstreams=upstreams(fake_upstream, mode), personalization=personalization, **sections)

    return run


def post(proxy, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx2.Response:
    return httpx2.post(
        f"{proxy.base_url}/responses",
        content=orjson.dumps(body),
        headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json", **(headers or {})},
        timeout=30,
    )


def client(proxy, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, default_headers=headers or None, max_retries=0)


def prefs_header(*preferences: str) -> dict[str, str]:
    return {"X-Perg-Preferences": orjson.dumps(list(preferences)).decode()}


def events_of(raw: bytes) -> list[tuple[str, dict[str, Any] | None]]:
    """(event name, data) of every event in a stream, comments (heartbeats) left out."""
    out = []
    for event in EventParser().feed(raw):
        if event.data is not None:
            out.append((event.name.decode(), orjson.loads(event.data)))
    return out


def stream(proxy, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[httpx2.Response, list[tuple[str, Any]]]:
    response = post(proxy, {**body, "stream": True}, headers)
    return response, events_of(response.content)


def output_texts(response: dict[str, Any]) -> list[str]:
    return [
        part["text"]
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    ]


# --- off: a pass-through on a native upstream, a translation via chat ---------------------------


def test_off_on_a_native_upstream_relays_the_bytes(start, fake_upstream):
    proxy = start("native")
    body = {"model": "echo", "input": QUESTION, "store": True, "previous_response_id": "resp_earlier", "metadata": {"k": "v"}}
    response = post(proxy, body)
    assert response.status_code == 200, response.text
    assert response.headers["x-perg-strategy"] == "off" and response.headers["x-perg-aligned"] == "false"
    (sent,) = fake_upstream.response_bodies()
    assert sent == body  # every field forwarded as sent: the proxy keeps no state
    assert output_texts(response.json()) == [QUESTION]


def test_off_via_chat_translates_both_ways_with_the_sdk(start, fake_upstream):
    proxy = start("via_chat")
    answer = client(proxy).responses.create(
        model="echo", instructions="Be brief.", input=QUESTION, max_output_tokens=50, temperature=0.2, store=True, metadata={"a": "b"}
    )
    assert answer.output_text == QUESTION
    assert answer.status == "completed" and answer.usage is not None
    (chat,) = fake_upstream.chat_bodies()
    assert chat["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    assert chat["max_completion_tokens"] == 50 and chat["temperature"] == 0.2
    assert "store" not in chat and "metadata" not in chat and "input" not in chat
    usage = fake_upstream.chat_bodies()  # the fake's chat usage, renamed
    assert answer.usage.input_tokens == sum(len(m["content"].split()) for m in usage[0]["messages"])
    assert answer.usage.total_tokens == answer.usage.input_tokens + answer.usage.output_tokens
    assert fake_upstream.response_bodies() == []  # the probe is not needed when the mode is configured


@pytest.mark.parametrize("mode", MODES)
def test_off_streams_proper_events_with_the_sdk(start, mode):
    proxy = start(mode)
    with client(proxy).responses.stream(model="echo", input=QUESTION) as events:
        kinds = [event.type for event in events]
        final = events.get_final_response()
    assert final.output_text == QUESTION
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    for kind in ("response.output_item.added", "response.content_part.added", "response.output_text.delta",
                 "response.output_text.done", "response.content_part.done", "response.output_item.done"):  # fmt: skip
        assert kind in kinds


def test_via_chat_stream_events_are_numbered_and_consistent(start):
    proxy = start("via_chat")
    response, events = stream(proxy, {"model": "echo", "input": QUESTION})
    assert response.status_code == 200
    numbers = [data["sequence_number"] for _, data in events]
    assert numbers == list(range(len(events)))
    assert all(name == data["type"] for name, data in events)
    deltas = "".join(data["delta"] for name, data in events if name == "response.output_text.delta")
    (done,) = [data for name, data in events if name == "response.output_text.done"]
    final = events[-1][1]["response"]
    assert deltas == done["text"] == QUESTION == "".join(output_texts(final))
    assert final["id"] == events[0][1]["response"]["id"]
    assert final["usage"]["output_tokens"] > 0


# --- tools --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_function_calls_are_served_unchanged_under_pref_aligner(start, fake_upstream, mode):
    proxy = start(mode, "pref_aligner")
    answer = client(proxy, **prefs_header(STYLE)).responses.create(model="tool-call", input="Weather in Paris?", tools=[WEATHER_TOOL])
    calls = [item for item in answer.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and calls[0].call_id == "call_1"
    assert orjson.loads(calls[0].arguments) == {"city": "Paris"}
    assert fake_upstream.chat_bodies("aligner") == []  # nothing was rewritten


def test_via_chat_translates_tools_and_the_tool_loop(start, fake_upstream):
    proxy = start("via_chat")
    sdk = client(proxy)
    first = sdk.responses.create(model="tool-call", input="Weather in Paris?", tools=[WEATHER_TOOL], tool_choice="auto")
    (chat,) = fake_upstream.chat_bodies()
    assert chat["tools"] == [{"type": "function", "function": {k: v for k, v in WEATHER_TOOL.items() if k != "type"}}]
    assert chat["tool_choice"] == "auto"
    calls = [item for item in first.output if item.type == "function_call"]
    assert [call.call_id for call in calls] == ["call_1", "call_2"]
    history = [{"role": "user", "content": "Weather in Paris?"}]
    history += [{"type": "function_call", "call_id": c.call_id, "name": c.name, "arguments": c.arguments} for c in calls]
    history += [{"type": "function_call_output", "call_id": c.call_id, "output": f"result {c.call_id}"} for c in calls]
    fake_upstream.clear()
    fake_upstream.responses_native = False
    second = sdk.responses.create(model="echo", input=history, tools=[WEATHER_TOOL], tool_choice={"type": "function", "name": "get_weather"})
    (chat,) = fake_upstream.chat_bodies()
    assert chat["messages"][1] == {
        "role": "assistant",
        "content": "",  # not null: llama_cpp.server rejects a null content
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}},
        ],
    }
    assert chat["messages"][2:] == [
        {"role": "tool", "tool_call_id": "call_1", "content": "result call_1"},
        {"role": "tool", "tool_call_id": "call_2", "content": "result call_2"},
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert second.status == "completed"


def test_via_chat_streams_function_call_arguments(start):
    proxy = start("via_chat")
    response, events = stream(proxy, {"model": "tool-call", "input": "Weather?", "tools": [WEATHER_TOOL]})
    names = [name for name, _ in events]
    assert names.count("response.function_call_arguments.done") == 2
    done = [data for name, data in events if name == "response.function_call_arguments.done"]
    assert [orjson.loads(d["arguments"]) for d in done] == [{"city": "Paris"}, {"tz": "CET"}]
    for item in done:
        deltas = "".join(d["delta"] for n, d in events if n == "response.function_call_arguments.delta" and d["item_id"] == item["item_id"])
        assert deltas == item["arguments"]
    final = events[-1][1]["response"]
    assert [item["call_id"] for item in final["output"]] == ["call_1", "call_2"]
    assert names[-1] == "response.completed"


# --- the stateful fields on via_chat ------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("previous_response_id", "resp_1", "previous_response_id"),
        ("background", True, "background"),
        ("conversation", "conv_1", "conversation"),
        ("prompt", {"id": "pmpt_1"}, "prompt"),
        ("input", [{"type": "item_reference", "id": "msg_1"}], "input[0].type"),
        ("tools", [{"type": "web_search"}], "tools[0].type"),
    ],
)
def test_via_chat_refuses_what_needs_state_naming_the_field(start, fake_upstream, field, value, param):
    proxy = start("via_chat")
    body = {"model": "echo", "input": QUESTION, field: value}
    response = post(proxy, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == "unsupported_parameter"
    assert param.split("[")[0] in error["message"]
    assert fake_upstream.chat_bodies() == []


def test_via_chat_has_nothing_to_retrieve(start):
    proxy = start("via_chat")
    with pytest.raises(openai.NotFoundError) as caught:
        client(proxy).responses.retrieve("resp_123")
    assert "stores nothing" in caught.value.message


def test_native_retrieval_passes_through(start, fake_upstream):
    proxy = start("native")
    response = httpx2.get(f"{proxy.base_url}/responses/resp_123", headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert response.status_code == 200
    assert response.json()["path"] == "/v1/responses/resp_123"


# --- probing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("native", "expected"), [(True, "native"), (False, "via_chat")])
def test_an_unset_mode_is_probed(start_proxy, fake_upstream, native, expected):
    fake_upstream.responses_native = native
    proxy = start_proxy(upstreams=upstreams(fake_upstream, None))
    upstream = proxy.server.app[SERVICES].upstreams.all[0]
    assert wait_for(lambda: upstream.responses_api) == expected
    assert [(probe.path, probe.body) for probe in fake_upstream.probes if probe.path == "/v1/responses"] == [("/v1/responses", b"{}")]
    response = post(proxy, {"model": "echo", "input": QUESTION})
    assert output_texts(response.json()) == [QUESTION]

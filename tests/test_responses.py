"""`POST /v1/responses` through the pipeline, on the scripted fake upstream: its native Responses
endpoint and, with `responses_api: via_chat`, its chat completions. Driven by the openai SDK's
Responses client where the events' parsing matters, by raw HTTP where the bytes do."""

from __future__ import annotations

import time
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


OPEN_CLIENTS: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients():
    yield
    while OPEN_CLIENTS:
        OPEN_CLIENTS.pop().close()


def client(proxy, **headers: str) -> openai.OpenAI:
    """An SDK client on the proxy (closed after the test)."""
    sdk = openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, default_headers=headers or None, max_retries=0, timeout=60)
    OPEN_CLIENTS.append(sdk)
    return sdk


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


def test_a_native_stream_is_relayed_as_it_comes(start):
    proxy = start("native")
    body = {"model": "drip-150", "input": QUESTION, "stream": True}
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    started = time.monotonic()
    with httpx2.stream("POST", f"{proxy.base_url}/responses", json=body, headers=headers, timeout=30) as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        first_at = time.monotonic() - started
        rest = b"".join(chunks)
    total = time.monotonic() - started
    assert first.startswith(b"event: response.created")
    assert total > 1.2 and first_at < total / 2  # 10 events 150 ms apart: the first is not held back
    assert events_of(first + rest)[-1][0] == "response.completed"


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


@pytest.mark.parametrize("mode", MODES)
def test_streamed_function_calls_under_pref_aligner_with_the_sdk(start, fake_upstream, mode):
    proxy = start(mode, "pref_aligner")
    with client(proxy, **prefs_header(STYLE)).responses.stream(model="tool-call", input="Weather?", tools=[WEATHER_TOOL]) as events:
        kinds = [event.type for event in events]
        final = events.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert calls[0].call_id == "call_1" and orjson.loads(calls[0].arguments) == {"city": "Paris"}
    assert "response.function_call_arguments.done" in kinds and kinds[-1] == "response.completed"
    assert fake_upstream.chat_bodies("aligner") == []


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
    second = sdk.responses.create(
        model="echo", input=history, tools=[WEATHER_TOOL], tool_choice={"type": "function", "name": "get_weather"}
    )
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
    _, events = stream(proxy, {"model": "tool-call", "input": "Weather?", "tools": [WEATHER_TOOL]})
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


def test_via_chat_has_nothing_to_retrieve(start, fake_upstream):
    proxy = start("via_chat")
    with pytest.raises(openai.BadRequestError) as caught:
        client(proxy).responses.retrieve("resp_123")
    assert "stores nothing" in caught.value.message and caught.value.body["param"] == "store"
    with pytest.raises(openai.BadRequestError):
        client(proxy).responses.delete("resp_123")
    assert [item.path for item in fake_upstream.received] == []


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
    assert httpx2.get(f"{proxy.url}/readyz").json()["responses_api"] == {"main": expected}
    response = post(proxy, {"model": "echo", "input": QUESTION})
    assert output_texts(response.json()) == [QUESTION]


# --- naive and pref_aligner ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_naive_puts_the_preferences_after_the_clients_instructions(start, fake_upstream, mode):
    proxy = start(mode, "naive")
    response = post(
        proxy, {"model": "echo", "input": QUESTION, "instructions": "OWN-INSTRUCTIONS", "personalization": {"preferences": [STYLE]}}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-perg-strategy"] == "naive" and response.headers["x-perg-aligned"] == "true"
    if mode == "native":
        (sent,) = fake_upstream.response_bodies()
        instructions = sent["instructions"]
        assert "personalization" not in sent
    else:
        (sent,) = fake_upstream.chat_bodies()
        assert [m["role"] for m in sent["messages"]] == ["system", "user"]
        instructions = sent["messages"][0]["content"]
        assert "personalization" not in sent
    assert instructions.startswith("OWN-INSTRUCTIONS\n\n") and STYLE in instructions


@pytest.mark.parametrize("mode", MODES)
def test_pref_aligner_rewrites_the_message_text(start, fake_upstream, mode):
    proxy = start(mode, "pref_aligner")
    answer = client(proxy, **prefs_header(STYLE)).responses.with_raw_response.create(
        model="echo", input=QUESTION, instructions="SYSTEM-SECRET", temperature=0.3
    )
    assert answer.headers["x-perg-strategy"] == "pref_aligner" and answer.headers["x-perg-aligned"] == "true"
    parsed = answer.parse()
    assert parsed.output_text == f"Personalized: {QUESTION}"
    stage1 = fake_upstream.response_bodies() if mode == "native" else fake_upstream.chat_bodies("chat")
    assert len(stage1) == 1 and STYLE not in orjson.dumps(stage1).decode()  # stage 1 never sees a preference
    (stage2,) = fake_upstream.chat_bodies("aligner")
    assert f"### Answer to rewrite\n{QUESTION}" in stage2["messages"][1]["content"]
    assert "SYSTEM-SECRET" not in orjson.dumps(stage2).decode()
    extra = parsed.model_extra or {}
    assert extra["personalization"]["aligned"] == "true"
    usage = parsed.usage
    assert usage is not None and usage.total_tokens == usage.input_tokens + usage.output_tokens
    stage1_usage = extra["personalization"]["usage"]["stage1"]["total_tokens"]
    assert usage.total_tokens > stage1_usage  # stage 2 and the gate counted too


@pytest.mark.parametrize("mode", MODES)
def test_pref_aligner_streams_the_rewritten_answer(start, fake_upstream, mode):
    proxy = start(mode, "pref_aligner")
    with client(proxy, **prefs_header(STYLE)).responses.stream(model="echo", input=QUESTION) as events:
        kinds = [event.type for event in events]
        final = events.get_final_response()
    assert final.output_text == f"Personalized: {QUESTION}"
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and "response.content_part.done" in kinds
    assert all(body.get("stream") is not True for body in fake_upstream.response_bodies())  # stage 1 is read whole


@pytest.mark.parametrize("mode", MODES)
def test_with_the_guards_off_stage_two_streams_as_it_comes(start, fake_upstream, mode):
    proxy = start(mode, "pref_aligner", personalization={"aligner": {"guards": False}})
    with client(proxy, **prefs_header(STYLE)).responses.stream(model="echo", input=QUESTION) as events:
        deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
        final = events.get_final_response()
    assert len(deltas) > 1 and "".join(deltas) == final.output_text == f"Personalized: {QUESTION}"
    assert (final.model_extra or {})["personalization"]["aligned"] == "true"
    (stage2,) = fake_upstream.chat_bodies("aligner")
    assert stage2["stream"] is True


@pytest.mark.parametrize(
    ("aligner", "last", "text"), [("error-500", "response.completed", QUESTION), ("stream-break", "response.failed", None)]
)
def test_with_the_guards_off_a_failing_stage_two(start, fake_upstream, aligner, last, text):
    settings = {"aligner": {"guards": False, "model": aligner}, "relevance_gate": {"mode": "off"}}
    proxy = start("native", "pref_aligner", personalization=settings)
    _, events = stream(proxy, {"model": "echo", "input": QUESTION}, prefs_header(STYLE))
    assert events[-1][0] == last
    if text is not None:  # failed before any text: the draft is served
        assert output_texts(events[-1][1]["response"]) == [text]
        assert events[-1][1]["response"]["personalization"]["aligned"] == "fallback"
    else:
        assert events[-1][1]["response"]["status"] == "failed"


def test_pref_aligner_stream_sends_heartbeats_while_stage_one_runs(start, fake_upstream):
    proxy = start("native", "pref_aligner", server={"heartbeat_seconds": 0.05})
    response = post(proxy, {"model": "slow-400", "input": QUESTION, "stream": True}, prefs_header(STYLE))
    assert response.status_code == 200
    assert response.content.startswith(b": keep-alive\n\n")
    assert response.headers["x-perg-aligned"] == "pending"
    events = events_of(response.content)
    final = events[-1][1]["response"]
    assert events[-1][0] == "response.completed" and final["personalization"]["aligned"] == "true"
    assert output_texts(final) == [f"Personalized: {QUESTION}"]


@pytest.mark.parametrize("mode", MODES)
def test_structured_output_is_served_unchanged(start, fake_upstream, mode):
    proxy = start(mode, "pref_aligner")
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}
    text = {"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}}
    response = post(proxy, {"model": "echo", "input": '{"city": "Paris"}', "text": text}, prefs_header(STYLE))
    assert response.status_code == 200, response.text
    assert output_texts(response.json()) == ['{"city": "Paris"}']
    assert response.headers["x-perg-aligned"] == "false"
    assert fake_upstream.chat_bodies("aligner") == [] and fake_upstream.chat_bodies("gate") == []
    if mode == "via_chat":
        (chat,) = fake_upstream.chat_bodies()
        assert chat["response_format"]["type"] in ("json_schema", "json_object")


def test_refusals_and_reasoning_items_are_served_unchanged(start, fake_upstream):
    proxy = start("native", "pref_aligner", personalization={"aligner": {"model": "echo"}, "relevance_gate": {"model": "echo"}})
    items = [
        {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "thinking"}]},
        {"id": "msg_r", "type": "message", "status": "completed", "role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
        {"id": "msg_t", "type": "message", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "The capital is Paris.", "annotations": []}]},
    ]  # fmt: skip
    fake_upstream.scripts["mixed"] = lambda body: items
    response = post(proxy, {"model": "script:mixed", "input": QUESTION}, prefs_header(STYLE))
    output = response.json()["output"]
    assert output[:2] == items[:2]
    assert output_texts(response.json()) == ["Personalized: The capital is Paris."]
    _, events = stream(proxy, {"model": "script:mixed", "input": QUESTION}, prefs_header(STYLE))
    final = events[-1][1]["response"]
    assert final["output"][0] == items[0] and final["output"][1]["content"] == items[1]["content"]
    assert [n for n, _ in events].count("response.output_item.done") == 3


def test_the_extension_and_headers_never_reach_the_upstream(start, fake_upstream):
    proxy = start("native", "naive")
    body = {"model": "echo", "input": QUESTION, "personalization": {"preferences": [STYLE], "strategy": "off"}}
    response = post(proxy, body, {"X-Perg-User": "bob"})
    assert response.status_code == 200
    assert response.headers["x-perg-strategy"] == "off"
    (received,) = [item for item in fake_upstream.received if item.path == "/v1/responses"]
    assert b"personalization" not in received.body and STYLE.encode() not in received.body
    assert not any(name.lower().startswith("x-perg") for name in received.headers)


@pytest.mark.parametrize("source", ["header", "user"])
def test_stored_profiles_personalize(start, fake_upstream, source):
    proxy = start("via_chat", "pref_aligner")
    admin = {"Authorization": "Bearer admin-secret"}
    put = httpx2.put(f"{proxy.url}/perg/profiles/alice", json={"preferences": [STYLE]}, headers=admin)
    assert put.status_code == 200, put.text
    body: dict[str, Any] = {"model": "echo", "input": QUESTION}
    headers = {"X-Perg-User": "alice"} if source == "header" else {}
    if source == "user":
        body["user"] = "alice"
    response = post(proxy, body, headers)
    assert response.headers["x-perg-aligned"] == "true"
    assert output_texts(response.json()) == [f"Personalized: {QUESTION}"]


def test_return_draft_gives_stage_ones_answer(start):
    proxy = start("via_chat", "pref_aligner")
    extension = {"preferences": [STYLE], "return_draft": True}
    response = post(proxy, {"model": "echo", "input": QUESTION, "personalization": extension})
    field = response.json()["personalization"]
    assert field["draft"] == QUESTION and field["choices"][0]["outcome"] == "aligned"
    assert output_texts(response.json()) == [f"Personalized: {QUESTION}"]


def test_a_failing_rewrite_serves_stage_ones_answer(start, fake_upstream):
    proxy = start("native", "pref_aligner", personalization={"aligner": {"model": "error-500"}})
    response = post(proxy, {"model": "echo", "input": QUESTION}, prefs_header(STYLE))
    assert response.status_code == 200
    assert response.headers["x-perg-aligned"] == "fallback"
    assert output_texts(response.json()) == [QUESTION]
    assert proxy.metric("perg_aligner_fallbacks_total", {"reason": "upstream_http_500"}) == 1


def test_a_chinese_preference_in_the_b64_header(start, fake_upstream):
    import base64

    chinese = "用中文回答"
    encoded = base64.urlsafe_b64encode(orjson.dumps([chinese])).decode().rstrip("=")
    proxy = start("via_chat", "naive")
    response = post(proxy, {"model": "echo", "input": QUESTION}, {"X-Perg-Preferences-B64": encoded})
    assert response.status_code == 200 and response.headers["x-perg-aligned"] == "true"
    (sent,) = fake_upstream.chat_bodies()
    assert chinese in sent["messages"][0]["content"]


def test_without_preferences_pref_aligner_is_a_pass_through(start, fake_upstream):
    proxy = start("native", "pref_aligner")
    response = post(proxy, {"model": "echo", "input": QUESTION})
    assert response.headers["x-perg-aligned"] == "false"
    assert fake_upstream.chat_bodies() == []
    assert proxy.metric("perg_aligner_outcomes_total", {"strategy": "pref_aligner", "outcome": "no_preferences"}) == 1


# --- failures -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["stream-break", "stream-no-end"])
def test_a_native_stream_that_breaks_ends_in_an_error_event(start, model):
    proxy = start("native")
    response, events = stream(proxy, {"model": model, "input": QUESTION})
    assert response.status_code == 200
    assert events[-1][0] == "error" and events[-1][1]["type"] == "error"
    assert "response.completed" not in [name for name, _ in events]
    with client(proxy).responses.stream(model=model, input=QUESTION) as sdk_events:
        kinds = [event.type for event in sdk_events]
        assert kinds[-1] == "error"
        with pytest.raises(RuntimeError):
            sdk_events.get_final_response()


def test_a_stream_without_event_names_ends_where_its_data_says(start):
    proxy = start("native")
    _, events = stream(proxy, {"model": "data-only", "input": QUESTION})
    assert [name for name, _ in events][-1] == "message" and events[-1][1]["type"] == "response.completed"
    assert all(data["type"] != "error" for _, data in events)


def test_a_via_chat_stream_that_breaks_ends_in_response_failed(start):
    proxy = start("via_chat")
    response, events = stream(proxy, {"model": "stream-break", "input": QUESTION})
    assert response.status_code == 200
    name, data = events[-1]
    assert name == "response.failed" and data["response"]["status"] == "failed"
    assert data["response"]["error"]["code"]
    assert "response.completed" not in [n for n, _ in events]


@pytest.mark.parametrize("mode", MODES)
def test_upstream_errors_keep_their_status(start, mode):
    proxy = start(mode, "pref_aligner")
    with pytest.raises(openai.RateLimitError):
        client(proxy, **prefs_header(STYLE)).responses.create(model="error-429", input=QUESTION)
    response = post(proxy, {"model": "error-503", "input": QUESTION, "stream": True})
    assert response.status_code == 503 and response.json()["error"]["type"]


def test_a_stage_one_failure_after_a_heartbeat_is_an_error_event(start, fake_upstream):
    proxy = start("native", "pref_aligner", server={"heartbeat_seconds": 0.05})

    async def late_failure(body):
        import asyncio

        await asyncio.sleep(0.3)
        from aiohttp import web

        return web.Response(status=500, text='{"error": {"message": "boom", "type": "server_error"}}', content_type="application/json")

    fake_upstream.scripts["late"] = late_failure
    response, events = stream(proxy, {"model": "script:late", "input": QUESTION}, prefs_header(STYLE))
    assert response.status_code == 200 and response.content.startswith(b": keep-alive")
    assert [name for name, _ in events] == ["error"]
    assert events[0][1]["message"]


def test_bad_requests_are_openai_shaped_400s(start):
    proxy = start("native")
    for body, param in [({"input": QUESTION}, "model"), ({"model": "echo", "input": 3}, "input"),
                        ({"model": "echo", "input": [{"role": "robot", "content": "x"}]}, "input[0].role")]:  # fmt: skip
        response = post(proxy, body)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param


# --- the monitor ----------------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize(("mode", "strategy"), [("native", "off"), ("via_chat", "pref_aligner"), ("native", "naive")])
def test_sampled_requests_are_judged_as_chat_does(start, fake_upstream, streamed, mode, strategy):
    proxy = start(mode, strategy, monitor={"enabled": True, "sample_rate": 1.0, "store_samples": True})
    body = {"model": "echo", "input": QUESTION, "instructions": "Be brief.", "stream": streamed}
    response = post(proxy, body, prefs_header(STYLE))
    assert response.status_code == 200
    labels = {"model": "echo", "strategy": strategy, "role": "served", "relevance": "relevant"}
    assert wait_for(lambda: proxy.metric("perg_monitor_judged_total", labels)) == 1
    (follow,) = fake_upstream.chat_bodies("judge_follow")
    served = "Personalized: " + QUESTION if strategy == "pref_aligner" else QUESTION
    assert served in follow["messages"][1]["content"]  # the answer served, read from the response or its events
    samples = httpx2.get(f"{proxy.url}/perg/monitor/samples", headers={"Authorization": "Bearer admin-secret"}).json()["data"]
    assert len(samples) == 1 and samples[0]["request_id"] == response.headers["x-request-id"]


def test_shadow_runs_the_other_strategy_on_the_chat_equivalent(start, fake_upstream):
    proxy = start("native", "pref_aligner", monitor={"enabled": True, "sample_rate": 1.0, "shadow_rate": 1.0})
    response = post(proxy, {"model": "echo", "input": QUESTION, "instructions": "OWN"}, prefs_header(STYLE))
    assert output_texts(response.json()) == [f"Personalized: {QUESTION}"]
    shadow = {"model": "echo", "strategy": "naive", "role": "shadow", "relevance": "relevant"}
    assert wait_for(lambda: proxy.metric("perg_monitor_judged_total", shadow)) == 1
    naive = [b for b in fake_upstream.chat_bodies("chat") if any(STYLE in str(m["content"]) for m in b["messages"])]
    assert len(naive) == 1 and naive[0]["messages"][0] == {"role": "system", "content": "OWN"}


def test_a_request_that_needs_stored_state_is_not_sampled(start, fake_upstream):
    proxy = start("native", "naive", monitor={"enabled": True, "sample_rate": 1.0})
    response = post(proxy, {"model": "echo", "input": QUESTION, "previous_response_id": "resp_1"}, prefs_header(STYLE))
    assert response.status_code == 200
    labels = {"model": "echo", "strategy": "naive", "role": "served", "relevance": "relevant"}
    assert wait_for(lambda: proxy.metric("perg_monitor_judged_total", labels), timeout=0.5) == 0
    assert proxy.metric("perg_monitor_dropped_total", {"reason": "stateful"}) == 1

"""The OpenAI Agents SDK (`openai-agents`) against the proxy, as an unmodified app runs it.

The app is the SDK's defaults: the Responses API, its own client built from OPENAI_BASE_URL and
OPENAI_API_KEY (only the base URL points at the proxy), no model settings. The user is the one
bound to the client key, so the stored profile applies without a line of app code changing.
Tracing is off (OPENAI_AGENTS_DISABLE_TRACING=1): the SDK would export traces to OpenAI otherwise.

`Runner.run`, `Runner.run_streamed`, a tool loop (the SDK sends the function call and its output
back as input items) and `output_type` (a json_schema text format), on both upstream styles
(`responses_api: native` and `via_chat`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from pydantic import BaseModel

from tests.conftest import ADMIN_KEY, CLIENT_KEY, UPSTREAM_KEY
from tests.fake_upstream import FakeUpstream, Received
from tests.scripted_tools import requested_schema, weather_loop

agents = pytest.importorskip("agents", reason="openai-agents is not installed (pip install -e '.[dev]')")

PROMPT = "What is the capital of France?"
PREFERENCE = "Answer like a pirate."
ALIGNER_MARK = "You are an editor."
ALICE_KEY = "sk-agent-alice"  # bound to the user alice
MODES = ["via_chat", "native"]


class City(BaseModel):
    city: str
    country: str


@pytest.fixture(autouse=True)
async def sdk_environment(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """What the app's deployment sets: tracing off. And the SDK's one shared HTTP client (made on
    first use, bound to that event loop) made fresh for each test and closed after it."""
    async with agents_sdk(monkeypatch):
        yield


@contextlib.asynccontextmanager
async def agents_sdk(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    from agents.models import openai_provider

    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    agents.set_tracing_disabled(True)  # the env is read once per process; this makes sure
    monkeypatch.setattr(openai_provider, "_http_client", None)
    try:
        yield agents
    finally:
        if openai_provider._http_client is not None:
            await openai_provider._http_client.aclose()


def serve(start_proxy: Any, fake: FakeUpstream, mode: str, monkeypatch: pytest.MonkeyPatch, key: str = ALICE_KEY, **sections: Any) -> Any:
    fake.responses_native = mode == "native"  # via_chat: /v1/responses is a 404 there, as on llama_cpp.server
    proxy = start_proxy(
        upstreams=[{"name": "main", "base_url": fake.url, "api_key": UPSTREAM_KEY, "responses_api": mode}],  # type: ignore[attr-defined]
        personalization={"default_strategy": "pref_aligner"},
        auth={"client_keys": [CLIENT_KEY, {"key": ALICE_KEY, "user_id": "alice"}], "admin_key": ADMIN_KEY},
        **sections,
    )
    stored = httpx2.put(
        f"{proxy.url}/perg/profiles/alice", json={"preferences": [PREFERENCE]}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert stored.status_code == 200
    monkeypatch.setenv("OPENAI_BASE_URL", proxy.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    return proxy


def text_of(item: Received) -> str:
    return json.dumps(item.json, ensure_ascii=False) if item.body else ""


def stage2_calls(fake: FakeUpstream) -> list[Received]:
    return [item for item in fake.received if ALIGNER_MARK in text_of(item)]


def stage1_calls(fake: FakeUpstream) -> list[Received]:
    return [item for item in fake.received if (item.role == "chat" or item.path == "/v1/responses") and ALIGNER_MARK not in text_of(item)]


def assert_profile_reached_stage2(fake: FakeUpstream, rewrites: int = 1) -> None:
    calls = stage2_calls(fake)
    assert len(calls) == rewrites, [item.path for item in fake.received]
    assert all(PREFERENCE in text_of(item) for item in calls)
    assert all(PREFERENCE not in text_of(item) for item in stage1_calls(fake))


@pytest.mark.parametrize("mode", MODES)
async def test_runner_run_gets_the_stored_profile(start_proxy, fake_upstream, mode, monkeypatch):
    serve(start_proxy, fake_upstream, mode, monkeypatch)
    agent = agents.Agent(name="assistant", instructions="You are helpful.", model="echo")
    result = await agents.Runner.run(agent, PROMPT)
    assert result.final_output == f"Personalized: {PROMPT}"
    assert_profile_reached_stage2(fake_upstream)
    (stage1,) = stage1_calls(fake_upstream)
    assert (stage1.path == "/v1/responses") == (mode == "native")
    if mode == "native":
        assert stage1.json["instructions"] == "You are helpful."  # the client's own, unchanged
    else:
        assert stage1.json["messages"][0] == {"role": "system", "content": "You are helpful."}


@pytest.mark.parametrize("mode", MODES)
async def test_run_streamed_gets_the_stored_profile(start_proxy, fake_upstream, mode, monkeypatch):
    serve(start_proxy, fake_upstream, mode, monkeypatch)
    agent = agents.Agent(name="assistant", model="echo")
    result = agents.Runner.run_streamed(agent, PROMPT)
    kinds: list[str] = []
    deltas: list[str] = []
    async for event in result.stream_events():
        if event.type == "raw_response_event":
            kinds.append(event.data.type)
            if event.data.type == "response.output_text.delta":
                deltas.append(event.data.delta)
    assert result.final_output == f"Personalized: {PROMPT}"
    assert "".join(deltas) == result.final_output
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.failed" not in kinds
    assert_profile_reached_stage2(fake_upstream)


@pytest.mark.parametrize("mode", MODES)
async def test_run_streamed_reads_through_the_heartbeats_of_a_slow_stage_one(start_proxy, fake_upstream, mode, monkeypatch):
    serve(start_proxy, fake_upstream, mode, monkeypatch, server={"heartbeat_seconds": 0.05})
    result = agents.Runner.run_streamed(agents.Agent(name="assistant", model="slow-400"), PROMPT)
    kinds = [event.data.type async for event in result.stream_events() if event.type == "raw_response_event"]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert result.final_output == f"Personalized: {PROMPT}"
    assert_profile_reached_stage2(fake_upstream)


@pytest.mark.parametrize("how", ["header", "user_field"])
async def test_the_user_named_by_the_app_selects_the_profile(start_proxy, fake_upstream, how, monkeypatch):
    """With an unbound key the app names its user: X-Perg-User in ModelSettings.extra_headers, or
    the Responses API's `user` field (ModelSettings.extra_args)."""
    serve(start_proxy, fake_upstream, "via_chat", monkeypatch, key=CLIENT_KEY)
    settings = (
        agents.ModelSettings(extra_headers={"X-Perg-User": "alice"})
        if how == "header"
        else agents.ModelSettings(extra_args={"user": "alice"})
    )
    agent = agents.Agent(name="assistant", model="echo", model_settings=settings)
    result = await agents.Runner.run(agent, PROMPT)
    assert result.final_output == f"Personalized: {PROMPT}"
    assert_profile_reached_stage2(fake_upstream)


@agents.function_tool
def weather(city: str) -> str:
    """The current weather in a city."""
    return json.dumps({"city": city, "forecast": "sunny", "celsius": 21})


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_tool_loop_completes_and_only_the_final_answer_is_rewritten(start_proxy, fake_upstream, mode, stream, monkeypatch):
    fake_upstream.scripts["weather"] = weather_loop
    serve(start_proxy, fake_upstream, mode, monkeypatch)
    agent = agents.Agent(name="assistant", model="script:weather", tools=[weather])
    if stream:
        result: Any = agents.Runner.run_streamed(agent, "What is the weather in Paris?")
        async for _ in result.stream_events():
            pass
    else:
        result = await agents.Runner.run(agent, "What is the weather in Paris?")
    assert result.final_output == "Personalized: It is sunny in Paris, 21 degrees."
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    first, second = (item.json for item in stage1_calls(fake_upstream))
    # the SDK sent the call and its output back as input items: forwarded as they are (native), or
    # as an assistant message with the tool call and a tool message (via_chat)
    if mode == "native":
        assert [t["name"] for t in first["tools"]] == ["weather"]
        call, output = (item for item in second["input"] if item.get("type") in ("function_call", "function_call_output"))
        assert call["call_id"] == output["call_id"] == "call_w1"
        assert json.loads(output["output"])["forecast"] == "sunny"
    else:
        assert [t["function"]["name"] for t in first["tools"]] == ["weather"]
        assert [m["role"] for m in second["messages"]] == ["user", "assistant", "tool"]
        assert second["messages"][1]["tool_calls"][0]["id"] == "call_w1"
        assert second["messages"][2]["tool_call_id"] == "call_w1"
        assert json.loads(second["messages"][2]["content"])["forecast"] == "sunny"
    assert_profile_reached_stage2(fake_upstream)  # once: the tool call itself was served unchanged


@pytest.mark.parametrize("mode", MODES)
async def test_output_type_is_parsed_and_never_rewritten(start_proxy, fake_upstream, mode, monkeypatch):
    serve(start_proxy, fake_upstream, mode, monkeypatch)
    agent = agents.Agent(name="extractor", model="echo", output_type=City)
    result = await agents.Runner.run(agent, json.dumps({"city": "Paris", "country": "France"}))
    assert result.final_output == City(city="Paris", country="France")
    assert stage2_calls(fake_upstream) == []
    (stage1,) = stage1_calls(fake_upstream)
    assert requested_schema(stage1.json)["required"] == ["city", "country"]
    if mode == "native":
        assert stage1.json["text"]["format"]["type"] == "json_schema"  # forwarded as the SDK sent it

"""Node clients against the proxy: the Vercel AI SDK (`ai` + `@ai-sdk/openai`: generateText,
streamText, Output.object, a tool loop) and the openai Node SDK (Responses, streamed and not, and
chat completions), each run by tests/node/clients.mjs in a child process.

Preferences go as `X-Perg-Preferences-B64` (base64url of the UTF-8 JSON array): the AI SDK drops
unknown body keys, so a header is its only per-request channel, and Node's fetch refuses a
non-ASCII header value (the last test shows it). The Chinese preference is checked where it has to
arrive: in the stage-2 prompt the fake upstream recorded.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

from tests.conftest import ADMIN_KEY, CLIENT_KEY, UPSTREAM_KEY
from tests.fake_upstream import FakeUpstream, Received
from tests.node_clients import node_or_skip, run_node
from tests.scripted_tools import requested_schema, weather_loop

CHINESE = "请用中文回答，语气友好。"  # "Answer in Chinese, in a friendly tone."
PROMPT = "What is the capital of France?"
ALIGNER_MARK = "You are an editor."  # the first line of the stage-2 prompt (proxy/prompts/aligner.txt)
CITY = {"city": "Paris", "country": "France"}
MODES = ["via_chat", "native"]


@pytest.fixture(autouse=True)
def _node() -> None:
    node_or_skip()


def text_of(item: Received) -> str:
    return json.dumps(item.json, ensure_ascii=False) if item.body else ""


def stage2_calls(fake: FakeUpstream) -> list[Received]:
    """Requests that carry the aligner's prompt, on whichever upstream route they went."""
    return [item for item in fake.received if ALIGNER_MARK in text_of(item)]


def client_calls(fake: FakeUpstream) -> list[Received]:
    """Stage 1 (or the only call): the client's own request, chat or Responses."""
    return [item for item in fake.received if item.role == "chat" or item.path == "/v1/responses"]


def aligning_proxy(start_proxy: Any, fake: FakeUpstream, mode: str | None = None, **sections: Any) -> Any:
    """A proxy aligning by default; `mode` is the upstream's `responses_api` (chat-only tests leave it)."""
    upstream = {"name": "main", "base_url": fake.url, "api_key": UPSTREAM_KEY}  # type: ignore[attr-defined]
    if mode is not None:
        upstream["responses_api"] = mode
        fake.responses_native = mode == "native"  # via_chat: /v1/responses is a 404 there, as on llama_cpp.server
    return start_proxy(upstreams=[upstream], personalization={"default_strategy": "pref_aligner"}, **sections)


def node(proxy: Any, scenario: str, model: str = "echo", prompt: str = PROMPT, **options: Any) -> dict[str, Any]:
    return run_node(scenario, proxy.base_url, CLIENT_KEY, model, prompt, **options)


def assert_chinese_preference_reached_stage2(fake: FakeUpstream) -> None:
    calls = stage2_calls(fake)
    assert len(calls) == 1, [item.path for item in fake.received]
    assert CHINESE in text_of(calls[0])
    stage1 = client_calls(fake)
    assert stage1 and all(CHINESE not in text_of(item) for item in stage1)  # stage 1 is the request without preferences


@pytest.mark.parametrize("mode", MODES)
def test_ai_sdk_generate_text_on_the_responses_api_serves_the_rewrite(start_proxy, fake_upstream, mode):
    proxy = aligning_proxy(start_proxy, fake_upstream, mode)
    result = node(proxy, "ai-generate", preferences=[CHINESE])
    assert result["text"] == f"Personalized: {PROMPT}"
    assert result["headers"]["x-perg-strategy"] == "pref_aligner"
    assert result["headers"]["x-perg-aligned"] == "true"
    assert result["finishReason"] == "stop"
    assert_chinese_preference_reached_stage2(fake_upstream)
    assert any(item.path == "/v1/responses" for item in fake_upstream.received) == (mode == "native")


def test_ai_sdk_app_naming_its_user_gets_the_stored_profile(start_proxy, fake_upstream):
    proxy = aligning_proxy(start_proxy, fake_upstream, "via_chat")
    stored = httpx2.put(f"{proxy.url}/perg/profiles/li", json={"preferences": [CHINESE]}, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert stored.status_code == 200
    result = node(proxy, "ai-generate", user="li")  # X-Perg-User: li
    assert result["text"] == f"Personalized: {PROMPT}"
    assert result["headers"]["x-perg-aligned"] == "true"
    assert_chinese_preference_reached_stage2(fake_upstream)


@pytest.mark.parametrize("mode", MODES)
def test_ai_sdk_stream_text_on_the_responses_api_streams_the_rewrite(start_proxy, fake_upstream, mode):
    proxy = aligning_proxy(start_proxy, fake_upstream, mode)
    result = node(proxy, "ai-stream", preferences=[CHINESE])
    assert result["errors"] == []
    assert result["text"] == f"Personalized: {PROMPT}"
    parts = result["parts"]
    assert parts[0] == "start" and parts[-1] == "finish"
    assert "text-delta" in parts and "error" not in parts
    assert result["finishReason"] == "stop"
    assert_chinese_preference_reached_stage2(fake_upstream)


@pytest.mark.parametrize(("scenario", "mode"), [("ai-object", "via_chat"), ("ai-object", "native"), ("ai-chat-object", None)])
def test_ai_sdk_output_object_is_served_unchanged_and_parsed(start_proxy, fake_upstream, scenario, mode):
    """Output.object asks for a json_schema answer: a structured output is never rewritten, even
    with preferences, and the SDK parses it against its zod schema."""
    proxy = aligning_proxy(start_proxy, fake_upstream, mode)
    result = node(proxy, scenario, prompt=json.dumps(CITY), preferences=[CHINESE])
    assert result["output"] == CITY
    assert result["headers"]["x-perg-aligned"] == "false"
    assert stage2_calls(fake_upstream) == []
    (stage1,) = client_calls(fake_upstream)
    assert set(requested_schema(stage1.json)["properties"]) == {"city", "country"}  # sent JSON-constrained


def test_ai_sdk_tool_loop_on_chat_completions_rewrites_only_the_final_answer(start_proxy, fake_upstream):
    fake_upstream.scripts["weather"] = weather_loop
    proxy = aligning_proxy(start_proxy, fake_upstream)
    result = node(proxy, "ai-chat-tools", model="script:weather", prompt="What is the weather in Paris?", preferences=[CHINESE])
    assert [step["toolCalls"] for step in result["steps"]] == [["weather"], []]
    assert [step["finishReason"] for step in result["steps"]] == ["tool-calls", "stop"]
    assert result["text"] == "Personalized: It is sunny in Paris, 21 degrees."
    first, second = fake_upstream.chat_bodies("chat")
    assert [t["function"]["name"] for t in first["tools"]] == ["weather"]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "tool"]
    assert second["messages"][1]["tool_calls"][0]["function"]["name"] == "weather"
    assert_chinese_preference_reached_stage2(fake_upstream)  # one rewrite: the tool call was served unchanged


@pytest.mark.parametrize("mode", MODES)
def test_ai_sdk_tool_loop_on_the_responses_api(start_proxy, fake_upstream, mode):
    """generateText's own loop sends the function call and its output back whole (no item_reference)."""
    fake_upstream.scripts["weather"] = weather_loop
    proxy = aligning_proxy(start_proxy, fake_upstream, mode)
    result = node(proxy, "ai-tools", model="script:weather", prompt="What is the weather in Paris?", preferences=[CHINESE])
    assert [step["toolCalls"] for step in result["steps"]] == [["weather"], []]
    assert result["text"] == "Personalized: It is sunny in Paris, 21 degrees."
    assert_chinese_preference_reached_stage2(fake_upstream)


@pytest.mark.parametrize("mode", MODES)
def test_ai_sdk_second_turn_of_a_conversation(start_proxy, fake_upstream, mode):
    """The AI SDK sends an earlier answer as an item_reference unless `store: false`: a native
    upstream resolves it; via_chat keeps no state, so it is a 400 naming the item, never dropped."""
    proxy = aligning_proxy(start_proxy, fake_upstream, mode)
    result = node(proxy, "ai-two-turns", model="echo")
    if mode == "native":
        assert result["texts"] == [PROMPT, "And again?"]
        second = fake_upstream.response_bodies()[-1]
        assert {"type": "item_reference", "id": "msg_fake"} in second["input"]
    else:
        error = json.loads(result["error"]["body"])["error"]
        assert result["error"]["status"] == 400
        assert error["code"] == "unsupported_parameter" and error["param"] == "input[1].type"
        assert "item_reference" in error["message"]
    fake_upstream.clear()
    stateless = node(proxy, "ai-two-turns", model="echo", store=False)  # the SDK sends the answer itself
    assert stateless["texts"] == [PROMPT, "And again?"]


@pytest.mark.parametrize("mode", MODES)
def test_openai_node_sdk_responses_create(start_proxy, fake_upstream, mode):
    proxy = aligning_proxy(start_proxy, fake_upstream, mode)
    result = node(proxy, "openai-responses", preferences=[CHINESE])
    assert result["text"] == f"Personalized: {PROMPT}"
    assert result["status"] == "completed"
    messages = [item for item in result["output"] if item["type"] == "message"]
    assert [part["text"] for part in messages[0]["content"] if part["type"] == "output_text"] == [result["text"]]
    assert result["headers"]["x-perg-aligned"] == "true"
    assert_chinese_preference_reached_stage2(fake_upstream)


@pytest.mark.parametrize("mode", MODES)
def test_openai_node_sdk_responses_stream_is_well_formed(start_proxy, fake_upstream, mode):
    proxy = aligning_proxy(start_proxy, fake_upstream, mode)
    result = node(proxy, "openai-responses-stream", preferences=[CHINESE])
    events = result["events"]
    assert events[0] == "response.created" and events[-1] == "response.completed"
    assert "response.output_item.added" in events and "response.output_text.delta" in events
    assert events.index("response.output_item.added") < events.index("response.output_text.delta")
    assert "response.failed" not in events and "error" not in events
    assert result["text"] == f"Personalized: {PROMPT}"
    assert result["completedText"] == result["text"] and result["completedStatus"] == "completed"
    assert_chinese_preference_reached_stage2(fake_upstream)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scenario", ["ai-stream", "openai-responses-stream"])
def test_node_streams_read_through_the_heartbeats_of_a_slow_stage_one(start_proxy, fake_upstream, mode, scenario):
    """Stage 1 takes 400 ms, the proxy sends `: keep-alive` every 50 ms meanwhile: both Node SDKs
    skip the comments, see `x-perg-aligned: pending` and get the rewrite."""
    proxy = aligning_proxy(start_proxy, fake_upstream, mode, server={"heartbeat_seconds": 0.05})
    result = node(proxy, scenario, model="slow-400", preferences=[CHINESE])
    assert result["headers"]["x-perg-aligned"] == "pending"
    assert result["text"] == f"Personalized: {PROMPT}"
    assert_chinese_preference_reached_stage2(fake_upstream)


def test_openai_node_sdk_chat_completion_with_a_chinese_preference(start_proxy, fake_upstream):
    proxy = aligning_proxy(start_proxy, fake_upstream)
    result = node(proxy, "openai-chat", preferences=[CHINESE])
    assert result["text"] == f"Personalized: {PROMPT}"
    assert result["headers"]["x-perg-aligned"] == "true"
    assert_chinese_preference_reached_stage2(fake_upstream)


def test_a_plain_header_cannot_carry_the_chinese_preference_from_node(start_proxy, fake_upstream):
    """Why X-Perg-Preferences-B64 exists: Node's fetch throws before sending a non-ASCII header."""
    proxy = aligning_proxy(start_proxy, fake_upstream)
    result = node(proxy, "plain-header-non-ascii", preferences=[CHINESE])
    assert result["error"]["name"] == "TypeError" or (result["error"]["cause"] or {}).get("name") == "TypeError", result
    assert fake_upstream.received == []

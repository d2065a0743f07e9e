"""The OpenAI Agents SDK and the Vercel AI SDK end to end on the real local model, with the
settings `make run` serves (the openai SDK's Responses client: tests/test_local_responses.py; its
chat `parse()` and LangChain: tests/test_local_adapt.py).

The proxy runs config.example.yaml (its upstream section, `via_chat` Responses translation,
structured-output style, strategy `pref_aligner`, heartbeats) pointed at the test's own SmolLM2
server, except two things: profiles in memory, and the monitor off (its judges and canary would
queue behind the test's calls on a model that serves one request at a time).

SmolLM2-135M is weak: these assert behaviour (the stored profile was found and the pipeline ran,
answers arrive, streams are well formed, structured outputs parse against their schema), never
what the answer says. Few calls, small token limits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import httpx2
import pytest
import yaml
from pydantic import BaseModel

from proxy.config import expand_env, parse_settings
from proxy.local_model import MODEL_ALIAS
from tests.conftest import ROOT, RunningProxy
from tests.node_clients import run_node

pytestmark = pytest.mark.local_model
PREFERENCE = "Answer in one short sentence, like a pirate."
CHINESE = "请用中文回答。"  # "Answer in Chinese."
PROMPT = "What is the capital of France?"
QUESTION = "Is Paris in France? Answer yes or no."
MAX_TOKENS = 32
OUTCOMES = ("aligned", "skipped", "unchanged", "fallback")  # perg_aligner_outcomes_total: preferences were applied or weighed
ALIGNED = {"true", "skipped", "fallback", "pending"}  # x-perg-aligned once preferences were found


class Verdict(BaseModel):
    """Small enough that a constrained answer cannot run past the token limit."""

    answer: Literal["yes", "no"]


def make_run_settings(upstream_url: str) -> Any:
    data = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    data = expand_env(data, {"PERG_UPSTREAM_URL": upstream_url, "PERG_PORT": "0"})
    data["profiles"] = {"backend": "memory"}
    data["monitor"]["enabled"] = False
    data["monitor"]["canary"]["enabled"] = False
    return parse_settings(data)


@pytest.fixture
def make_run(local_model: Any) -> Iterator[RunningProxy]:
    proxy = RunningProxy(make_run_settings(local_model.base_url))
    yield proxy
    proxy.stop()


def client_key(proxy: RunningProxy) -> str:
    return proxy.settings.auth.client_keys[0].key


def store_profile(proxy: RunningProxy, user: str, preferences: list[str]) -> None:
    headers = {"Authorization": f"Bearer {proxy.settings.auth.admin_key}"}
    assert httpx2.put(f"{proxy.url}/perg/profiles/{user}", json={"preferences": preferences}, headers=headers).status_code == 200


def assert_pref_aligner_ran(proxy: RunningProxy) -> None:
    """One personalized request: stage 1 and the gate ran, and the outcome is one of preferences
    found (never `no_preferences`)."""
    counted = {
        o: proxy.metric("perg_aligner_outcomes_total", {"strategy": "pref_aligner", "outcome": o}) for o in (*OUTCOMES, "no_preferences")
    }
    assert counted["no_preferences"] == 0, counted
    assert sum(counted[o] for o in OUTCOMES) == 1, counted
    assert proxy.metric("perg_upstream_duration_seconds_count", {"upstream": "local", "stage": "gate", "outcome": "ok"}) == 1


# --- the OpenAI Agents SDK, unmodified: its own client from OPENAI_BASE_URL / OPENAI_API_KEY ---


@pytest.fixture
async def agents_app(make_run: RunningProxy, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    agents = pytest.importorskip("agents", reason="openai-agents is not installed (pip install -e '.[dev]')")
    from agents.models import openai_provider

    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    agents.set_tracing_disabled(True)
    monkeypatch.setattr(openai_provider, "_http_client", None)  # the SDK's shared client, made on this loop
    monkeypatch.setenv("OPENAI_BASE_URL", make_run.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", client_key(make_run))
    yield agents
    if openai_provider._http_client is not None:
        await openai_provider._http_client.aclose()


@pytest.mark.parametrize("stream", [False, True])
async def test_an_agents_sdk_app_gets_its_stored_profile_on_make_run(make_run, agents_app, stream):
    agents = agents_app
    store_profile(make_run, "alice", [PREFERENCE])
    settings = agents.ModelSettings(extra_headers={"X-Perg-User": "alice"}, max_tokens=MAX_TOKENS, temperature=0)
    agent = agents.Agent(name="assistant", model=MODEL_ALIAS, model_settings=settings)
    if stream:
        result = agents.Runner.run_streamed(agent, PROMPT)
        kinds, deltas = [], []
        async for event in result.stream_events():
            if event.type == "raw_response_event":
                kinds.append(event.data.type)
                if event.data.type == "response.output_text.delta":
                    deltas.append(event.data.delta)
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        assert "response.failed" not in kinds
        assert "".join(deltas) == result.final_output
    else:
        result = await agents.Runner.run(agent, PROMPT)
    assert isinstance(result.final_output, str) and result.final_output.strip()
    assert_pref_aligner_ran(make_run)


async def test_an_agents_sdk_output_type_parses_on_make_run(make_run, agents_app):
    agents = agents_app
    agent = agents.Agent(
        name="checker", model=MODEL_ALIAS, output_type=Verdict, model_settings=agents.ModelSettings(max_tokens=MAX_TOKENS, temperature=0)
    )
    result = await agents.Runner.run(agent, QUESTION)
    assert isinstance(result.final_output, Verdict)


# --- Node: the Vercel AI SDK (Responses by default), a Chinese preference in X-Perg-Preferences-B64 ---


@pytest.mark.parametrize("scenario", ["ai-generate", "ai-stream"])
def test_ai_sdk_with_a_chinese_preference_on_make_run(make_run, scenario):
    result = run_node(
        scenario, make_run.base_url, client_key(make_run), MODEL_ALIAS, PROMPT, preferences=[CHINESE], max_tokens=MAX_TOKENS, timeout=300
    )
    assert result["text"].strip()
    assert result["headers"]["x-perg-strategy"] == "pref_aligner"
    assert result["headers"]["x-perg-aligned"] in ALIGNED
    if scenario == "ai-stream":
        assert result["parts"][0] == "start" and result["parts"][-1] == "finish"
        assert result["errors"] == []
    assert_pref_aligner_ran(make_run)


def test_ai_sdk_output_object_on_make_run(make_run):
    result = run_node(
        "ai-object", make_run.base_url, client_key(make_run), MODEL_ALIAS, QUESTION, max_tokens=MAX_TOKENS, schema="verdict", timeout=300
    )
    assert result["output"]["answer"] in ("yes", "no"), result


def test_config_example_is_what_make_run_serves():
    """The settings above are config.example.yaml's own, only the two named sections changed."""
    settings = make_run_settings("http://127.0.0.1:1/v1")
    assert settings.personalization.default_strategy == "pref_aligner"
    assert settings.upstreams[0].name == "local"
    assert settings.upstreams[0].responses_api == "via_chat"

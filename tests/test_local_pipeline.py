"""Every strategy end to end on the real local model, with preferences from each source.

SmolLM2-135M is weak: these tests assert behaviour (valid answers, stages run, headers, metrics),
never that the rewrite is good.
"""

from __future__ import annotations

import asyncio

import httpx2
import openai
import pytest

from proxy.local_model import MODEL_ALIAS
from tests.conftest import ADMIN_KEY, CLIENT_KEY

pytestmark = pytest.mark.local_model
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
STYLE = "Answer in one short sentence, like a pirate."
OPTIONS = {"temperature": 0, "seed": 3, "max_tokens": 40}
ALIGNED = {"true", "false", "skipped", "fallback"}


@pytest.fixture
def local_proxy(start_proxy, local_model):
    return start_proxy(
        upstreams=[{"name": "local", "base_url": local_model.base_url, "structured_output": "json_object_schema"}],
        personalization={"default_strategy": "pref_aligner"},
        auth={"client_keys": [CLIENT_KEY, {"key": "sk-bound", "user_id": "carol"}], "admin_key": ADMIN_KEY},
        # No heartbeat before stage 1 ends, however slow the shared machine makes the model: these
        # tests read the outcome from x-perg-aligned (heartbeats are tested on the fake upstream).
        server={"heartbeat_seconds": 300},
    )


def client(proxy, key: str = CLIENT_KEY, **headers) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=key, max_retries=0, timeout=120, default_headers=headers or None)


@pytest.mark.parametrize("strategy", ["off", "naive", "pref_aligner"])
@pytest.mark.parametrize("stream", [False, True])
def test_each_strategy_streaming_and_not(local_proxy, strategy, stream):
    extension = {"personalization": {"preferences": [STYLE], "strategy": strategy}}
    with client(local_proxy) as c:
        if stream:
            raw = c.chat.completions.with_raw_response.create(
                model=MODEL_ALIAS, messages=QUESTION, stream=True, extra_body=extension, **OPTIONS
            )
            chunks = list(raw.parse())
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            assert len({ch.id for ch in chunks}) == 1
        else:
            raw = c.chat.completions.with_raw_response.create(model=MODEL_ALIAS, messages=QUESTION, extra_body=extension, **OPTIONS)
            text = raw.parse().choices[0].message.content
    assert text.strip()
    assert raw.headers["x-perg-strategy"] == strategy
    assert raw.headers["x-perg-aligned"] == ({"off": "false", "naive": "true"}.get(strategy) or raw.headers["x-perg-aligned"])
    assert raw.headers["x-perg-aligned"] in ALIGNED


def test_pref_aligner_runs_every_stage_on_the_real_model(local_proxy):
    with client(local_proxy) as c:
        completion = c.chat.completions.create(
            model=MODEL_ALIAS, messages=QUESTION, extra_body={"personalization": {"preferences": [STYLE], "return_draft": True}}, **OPTIONS
        )
    extension = completion.model_extra["personalization"]
    assert extension["draft"].strip()
    assert extension["aligned"] in ALIGNED
    for stage in ("stage1", "gate"):
        assert local_proxy.metric("perg_upstream_duration_seconds_count", {"upstream": "local", "stage": stage, "outcome": "ok"}) == 1
    stage2 = local_proxy.metric("perg_upstream_duration_seconds_count", {"upstream": "local", "stage": "stage2", "outcome": "ok"})
    assert stage2 == (1 if extension["aligned"] in ("true", "fallback") else 0)
    gate = sum(local_proxy.metric("perg_gate_outcomes_total", {"outcome": o}) for o in ("relevant", "irrelevant"))
    assert gate == 1


def test_preferences_from_header_and_profile(local_proxy):
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert httpx2.put(f"{local_proxy.url}/perg/profiles/carol", json={"preferences": [STYLE]}, headers=admin).status_code == 200
    results = []
    with client(local_proxy, **{"X-Perg-Preferences": f'["{STYLE}"]'}) as c:
        results.append(c.chat.completions.with_raw_response.create(model=MODEL_ALIAS, messages=QUESTION, **OPTIONS))
    with client(local_proxy) as c:  # the standard `user` field, looked up in the store
        results.append(c.chat.completions.with_raw_response.create(model=MODEL_ALIAS, messages=QUESTION, user="carol", **OPTIONS))
    with client(local_proxy, key="sk-bound") as c:  # the user bound to the client key
        results.append(c.chat.completions.with_raw_response.create(model=MODEL_ALIAS, messages=QUESTION, **OPTIONS))
    for raw in results:
        assert raw.headers["x-perg-strategy"] == "pref_aligner"
        assert raw.headers["x-perg-aligned"] in {"true", "skipped", "fallback"}  # preferences were found
        assert raw.parse().choices[0].message.content.strip()
    with client(local_proxy) as c:
        none = c.chat.completions.with_raw_response.create(model=MODEL_ALIAS, messages=QUESTION, user="nobody", **OPTIONS)
    assert none.headers["x-perg-aligned"] == "false"


def test_a_bound_key_never_gets_another_users_stored_preferences(local_proxy):
    """The issue's attack on the real model: a key bound to carol names dave in each of the three
    places; every call is a 403 (the SDK's PermissionDeniedError) and no model call is made."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    secret = "Always mention the code word PINEAPPLE-42."
    assert httpx2.put(f"{local_proxy.url}/perg/profiles/dave", json={"preferences": [secret]}, headers=admin).status_code == 200
    attempts = [{"user": "dave"}, {"extra_body": {"personalization": {"user_id": "dave"}}}, {"extra_headers": {"X-Perg-User": "dave"}}]
    with client(local_proxy, key="sk-bound") as c:
        for attempt in attempts:
            with pytest.raises(openai.PermissionDeniedError) as raised:
                c.chat.completions.create(model=MODEL_ALIAS, messages=QUESTION, **attempt, **OPTIONS)
            assert raised.value.code == "user_not_allowed"
        own = c.chat.completions.with_raw_response.create(model=MODEL_ALIAS, messages=QUESTION, user="carol", **OPTIONS)
    assert own.parse().choices[0].message.content.strip()


def test_unmodified_async_app_gets_personalized_answers_from_a_stored_profile(local_proxy):
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    httpx2.put(f"{local_proxy.url}/perg/profiles/dave", json={"preferences": [STYLE]}, headers=admin)

    async def app() -> tuple[str, str]:
        async with openai.AsyncOpenAI(base_url=local_proxy.base_url, api_key=CLIENT_KEY, timeout=120) as c:
            raw = await c.chat.completions.with_raw_response.create(model=MODEL_ALIAS, messages=QUESTION, user="dave", **OPTIONS)
            return raw.headers["x-perg-aligned"], raw.parse().choices[0].message.content

    aligned, text = asyncio.run(app())
    assert aligned in {"true", "skipped", "fallback"} and text.strip()

"""`POST /v1/responses` end to end on the real local model (llama_cpp.server has no Responses API:
the proxy probes that and translates to chat completions). Behaviour, not accuracy."""

from __future__ import annotations

import httpx2
import openai
import orjson
import pydantic
import pytest

from proxy.local_model import MODEL_ALIAS
from proxy.server.services import SERVICES
from tests.conftest import ADMIN_KEY, CLIENT_KEY, wait_for

pytestmark = pytest.mark.local_model
QUESTION = "Name the capital of France in one word."
STYLE = "Answer in one short sentence, like a pirate."
# max_output_tokens becomes max_completion_tokens, which llama_cpp.server ignores: the proxy sends
# it as max_tokens (upstreams[].max_tokens_parameter, set for the embedded model).
OPTIONS = {"temperature": 0, "max_output_tokens": 32, "extra_body": {"seed": 3}}
ALIGNED = {"true", "skipped", "fallback"}


@pytest.fixture
def local_proxy(start_proxy, local_model):
    return start_proxy(
        # responses_api unset: probed; max_tokens_parameter as config.example.yaml sets it
        upstreams=[{"name": "local", "base_url": local_model.base_url, "max_tokens_parameter": "max_tokens"}],
        personalization={"default_strategy": "pref_aligner"},
        auth={"client_keys": [CLIENT_KEY], "admin_key": ADMIN_KEY},
        server={"heartbeat_seconds": 300},
    )


def client(proxy, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=180, default_headers=headers or None)


def test_the_probe_finds_no_responses_api(local_proxy):
    upstream = local_proxy.server.app[SERVICES].upstreams.all[0]
    assert wait_for(lambda: upstream.responses_api, timeout=30) == "via_chat"


@pytest.mark.parametrize("strategy", ["off", "naive", "pref_aligner"])
def test_each_strategy_answers(local_proxy, strategy):
    with client(local_proxy, **{"X-Perg-Strategy": strategy, "X-Perg-Preferences": orjson.dumps([STYLE]).decode()}) as sdk:
        raw = sdk.responses.with_raw_response.create(model=MODEL_ALIAS, input=QUESTION, instructions="Be helpful.", **OPTIONS)
    response = raw.parse()
    assert response.status in ("completed", "incomplete")
    assert response.output_text.strip()
    assert response.usage is not None and 0 < response.usage.output_tokens
    assert raw.headers["x-perg-strategy"] == strategy
    expected = {"off": {"false"}, "naive": {"true"}}.get(strategy, ALIGNED)
    assert raw.headers["x-perg-aligned"] in expected


def test_off_equals_the_models_own_chat_answer(local_proxy, local_model):
    with client(local_proxy, **{"X-Perg-Strategy": "off"}) as sdk:
        response = sdk.responses.create(model=MODEL_ALIAS, input=QUESTION, **OPTIONS)
    with openai.OpenAI(base_url=local_model.base_url, api_key="none", max_retries=0, timeout=180) as direct:
        chat = direct.chat.completions.create(
            model=MODEL_ALIAS, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=32, seed=3
        )
    assert response.output_text == chat.choices[0].message.content
    assert response.usage is not None and chat.usage is not None
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens <= 32  # max_output_tokens held


@pytest.mark.parametrize("strategy", ["off", "pref_aligner"])
def test_streamed_with_the_sdk_from_a_stored_profile(local_proxy, strategy):
    put = httpx2.put(
        f"{local_proxy.url}/perg/profiles/alice", json={"preferences": [STYLE]}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert put.status_code == 200
    kinds, deltas = [], []
    with client(local_proxy, **{"X-Perg-Strategy": strategy, "X-Perg-User": "alice"}) as sdk:
        with sdk.responses.stream(model=MODEL_ALIAS, input=QUESTION, **OPTIONS) as events:
            for event in events:
                kinds.append(event.type)
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
            final = events.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")
    assert final.output_text.strip() and "".join(deltas) == final.output_text
    if strategy == "pref_aligner":
        assert (final.model_extra or {})["personalization"]["aligned"] in ALIGNED


def test_a_tool_loop_turn_is_accepted(local_proxy):
    """The second turn of an agent's tool loop (a function call and its output in `input`) goes
    to llama_cpp.server as chat messages it accepts (no null content)."""
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 21 C."},
    ]
    with client(local_proxy, **{"X-Perg-Strategy": "off"}) as sdk:
        response = sdk.responses.create(model=MODEL_ALIAS, input=history, tools=[tool], **OPTIONS)
    assert response.status in ("completed", "incomplete")
    assert response.output


def test_stateful_fields_are_refused(local_proxy):
    with client(local_proxy) as sdk, pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model=MODEL_ALIAS, input=QUESTION, previous_response_id="resp_1")
    assert caught.value.body["param"] == "previous_response_id"


def test_input_text_parts_are_accepted(local_proxy):
    """Content as a list of input_text parts (the AI SDK's form) reaches llama_cpp.server as the
    string its chat template takes (a list there is a 500)."""
    given = [{"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}]
    with client(local_proxy, **{"X-Perg-Strategy": "off"}) as sdk:
        response = sdk.responses.create(model=MODEL_ALIAS, input=given, **OPTIONS)
    assert response.output_text.strip()


class City(pydantic.BaseModel):
    city: str


@pytest.mark.parametrize("strategy", ["off", "pref_aligner"])
def test_structured_output_parses(local_proxy, strategy):
    """`responses.parse(text_format=...)` (the Agents SDK's `output_type` sends the same
    `text.format` json_schema): constrained on the embedded model, served unchanged."""
    with client(local_proxy, **{"X-Perg-Strategy": strategy, "X-Perg-Preferences": orjson.dumps([STYLE]).decode()}) as sdk:
        raw = sdk.responses.with_raw_response.parse(
            model=MODEL_ALIAS,
            input="Which city is the capital of France? Answer in JSON.",
            text_format=City,
            temperature=0,
            max_output_tokens=40,
        )
    parsed = raw.parse()
    assert isinstance(parsed.output_parsed, City)
    assert raw.headers["x-perg-aligned"] == "false"  # JSON is never rewritten

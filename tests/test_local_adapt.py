"""Today's structured-output and token-bound clients on the real embedded model, through the proxy.

llama_cpp.server answers `response_format: json_schema` with a 500 and ignores
`max_completion_tokens`; the proxy adapts both (proxy/upstream/adapt.py) with the upstream settings
config.example.yaml ships, so these clients work on `make run` unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from pydantic import BaseModel

from proxy.config import load_settings
from proxy.local_model import MODEL_ALIAS
from tests.conftest import CLIENT_KEY

pytestmark = pytest.mark.local_model
ROOT = Path(__file__).resolve().parent.parent
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer as JSON with the city and its country."}]
DETERMINISTIC = {"temperature": 0, "seed": 1}


class Capital(BaseModel):
    city: str
    country: str


def shipped_upstream(base_url: str) -> dict:
    """The embedded model's upstream entry of config.example.yaml, pointed at this test's model."""
    upstream = load_settings(ROOT / "config.example.yaml").upstreams[0].model_dump(mode="json", exclude_none=True)
    return {**upstream, "base_url": base_url}


@pytest.fixture
def embedded(start_proxy, local_model):
    def start(strategy: str = "off"):
        return start_proxy(
            local_model.base_url,
            upstreams=[shipped_upstream(local_model.base_url)],
            personalization={"default_strategy": strategy, "relevance_gate": {"mode": "off"}},
        )

    return start


def via(proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=120)


def test_the_model_itself_rejects_json_schema_and_ignores_max_completion_tokens(local_model):
    """What the proxy adapts around (asked directly, not through the proxy)."""
    with openai.OpenAI(base_url=local_model.base_url, api_key="none", max_retries=0, timeout=120) as direct:
        with pytest.raises(openai.InternalServerError):
            direct.chat.completions.parse(model=MODEL_ALIAS, messages=QUESTION, response_format=Capital, max_tokens=60)
        bounded = direct.chat.completions.create(model=MODEL_ALIAS, messages=QUESTION, max_tokens=8, **DETERMINISTIC)
    assert bounded.usage.completion_tokens <= 8


def test_openai_parse_returns_a_parsed_object(embedded):
    with via(embedded()) as client:
        completion = client.chat.completions.parse(
            model=MODEL_ALIAS, messages=QUESTION, response_format=Capital, max_completion_tokens=120, **DETERMINISTIC
        )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Capital) and parsed.city.strip()


def test_max_completion_tokens_bounds_the_answer(embedded):
    story = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    with via(embedded()) as client:
        completion = client.chat.completions.create(model=MODEL_ALIAS, messages=story, max_completion_tokens=8, **DETERMINISTIC)
    assert completion.usage.completion_tokens <= 8
    assert completion.choices[0].finish_reason == "length"


def test_json_schema_with_pref_aligner_stays_valid_json(embedded):
    """Stage 2 never rewrites a JSON answer: with preferences the client still gets its object."""
    extra = {"extra_body": {"personalization": {"preferences": ["Answer like a pirate."]}}}
    with via(embedded("pref_aligner")) as client:
        raw = client.chat.completions.with_raw_response.parse(
            model=MODEL_ALIAS, messages=QUESTION, response_format=Capital, max_completion_tokens=120, **DETERMINISTIC, **extra
        )
        stream = client.chat.completions.create(
            model=MODEL_ALIAS,
            messages=QUESTION,
            response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": Capital.model_json_schema()}},
            max_completion_tokens=120,
            stream=True,
            **DETERMINISTIC,
            **extra,
        )
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert raw.headers["x-perg-strategy"] == "pref_aligner" and raw.headers["x-perg-aligned"] == "false"
    assert isinstance(raw.parse().choices[0].message.parsed, Capital)
    assert Capital.model_validate(json.loads(streamed))


def test_langchain_with_structured_output(embedded):
    """LangChain's default structured output (method json_schema) and its max_tokens, which it
    sends as max_completion_tokens."""
    from langchain_openai import ChatOpenAI

    proxy = embedded()
    common = {"base_url": proxy.base_url, "model": MODEL_ALIAS, "api_key": CLIENT_KEY, "max_retries": 0, "timeout": 120, "temperature": 0}
    llm = ChatOpenAI(**common, max_tokens=120, seed=1)
    result = llm.with_structured_output(Capital).invoke(QUESTION[0]["content"])
    assert isinstance(result, Capital) and result.city.strip()
    short = ChatOpenAI(**common, max_tokens=8)
    message = short.invoke("Tell me a long story about a dragon.")
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] <= 8

"""The official openai Python SDK's Responses client, personalized, on both upstream styles: the
`responses.stream()` helper and `responses.parse(text_format=...)` as an app writes them.
(tests/test_responses.py tests the route itself; tests/test_agents_sdk.py the Agents SDK on it.)
"""

from __future__ import annotations

import httpx2
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import ADMIN_KEY, CLIENT_KEY, UPSTREAM_KEY

PROMPT = "What is the capital of France?"
PREFERENCE = "Answer like a pirate."
MODES = ["via_chat", "native"]


class City(BaseModel):
    city: str
    country: str


def aligning(start_proxy, fake, mode: str):
    fake.responses_native = mode == "native"
    proxy = start_proxy(
        upstreams=[{"name": "main", "base_url": fake.url, "api_key": UPSTREAM_KEY, "responses_api": mode}],
        personalization={"default_strategy": "pref_aligner"},
    )
    stored = httpx2.put(
        f"{proxy.url}/perg/profiles/ann", json={"preferences": [PREFERENCE]}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert stored.status_code == 200
    return openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0)


@pytest.mark.parametrize("mode", MODES)
def test_the_stream_helper_gets_the_rewrite_of_a_stored_profile(start_proxy, fake_upstream, mode):
    client = aligning(start_proxy, fake_upstream, mode)
    with client, client.responses.stream(model="echo", input=PROMPT, user="ann") as events:
        deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
        final = events.get_final_response()
    assert "".join(deltas) == final.output_text == f"Personalized: {PROMPT}"
    assert final.status == "completed"
    (stage2,) = fake_upstream.chat_bodies("aligner")
    assert PREFERENCE in stage2["messages"][-1]["content"]


@pytest.mark.parametrize("mode", MODES)
def test_parse_with_a_text_format_is_served_unchanged_under_pref_aligner(start_proxy, fake_upstream, mode):
    client = aligning(start_proxy, fake_upstream, mode)
    with client:
        raw = client.responses.with_raw_response.parse(
            model="echo", input='{"city": "Paris", "country": "France"}', text_format=City, user="ann"
        )
    assert raw.parse().output_parsed == City(city="Paris", country="France")
    assert raw.headers["x-perg-aligned"] == "false"  # a structured output is never rewritten
    assert fake_upstream.chat_bodies("aligner") == []

"""No silent gaps: personalization asked for where it cannot be given is said and counted; the
`personalization` extension never goes upstream; upstream error bodies that are not OpenAI
errors never reach a client (pass-through and the proxy's own stage calls)."""

from __future__ import annotations

import base64
import json

import httpx2
import orjson
import pytest

from tests.conftest import ADMIN_KEY, CLIENT_KEY

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
B64 = base64.urlsafe_b64encode(json.dumps(["用中文回答"], ensure_ascii=False).encode()).decode().rstrip("=")


def post(proxy, path: str, body: dict, headers: dict[str, str] | None = None) -> httpx2.Response:
    return httpx2.post(
        f"{proxy.base_url}{path}", content=orjson.dumps(body), headers={**AUTH, "Content-Type": "application/json", **(headers or {})}
    )


def unsupported(proxy, endpoint: str, source: str) -> float:
    return proxy.metric("perg_personalization_unsupported_total", {"endpoint": endpoint, "source": source})


@pytest.fixture
def aligner(start_proxy):
    proxy = start_proxy(personalization={"default_strategy": "pref_aligner"})
    response = httpx2.put(
        f"{proxy.url}/perg/profiles/alice", json={"preferences": ["Be brief."]}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert response.status_code == 200
    return proxy


COMPLETION = {"model": "m", "prompt": "Say hi"}
EMBEDDING = {"model": "m", "input": "x"}


@pytest.mark.parametrize(
    ("path", "body", "headers", "endpoint", "source"),
    [
        ("/completions", {**COMPLETION, "personalization": {"preferences": ["Be brief."]}}, {}, "completions", "request"),
        ("/completions", COMPLETION, {"X-Perg-Preferences": '["Be brief."]'}, "completions", "header"),
        ("/embeddings", EMBEDDING, {"X-Perg-Preferences-B64": B64}, "embeddings", "header"),
        ("/embeddings", EMBEDDING, {"X-Perg-User": "alice"}, "embeddings", "profile"),
        ("/completions", {**COMPLETION, "personalization": {"user_id": "alice"}}, {}, "completions", "profile"),
        ("/some/future/route", EMBEDDING, {"X-Perg-Preferences": '["Be brief."]'}, "other", "header"),
    ],
)
def test_personalization_on_a_route_that_cannot_give_it_is_said_and_counted(aligner, fake_upstream, path, body, headers, endpoint, source):
    response = post(aligner, path, body, headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-perg-aligned"] == "unsupported"
    assert unsupported(aligner, endpoint, source) == 1
    sent = fake_upstream.received[-1]
    assert "personalization" not in orjson.loads(sent.body)  # the extension never goes upstream
    assert not any(name.lower().startswith("x-perg") for name in sent.headers)


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (COMPLETION, {}),  # nothing asked
        (COMPLETION, {"X-Perg-User": "nobody"}),  # a user without a profile
        ({**COMPLETION, "user": "alice"}, {}),  # the standard field names who asks, not a wish
        ({**COMPLETION, "personalization": {"preferences": []}}, {}),  # an explicit empty list
        (COMPLETION, {"X-Perg-Preferences": '["Be brief."]', "X-Perg-Strategy": "off"}),  # personalization turned off
        ({**COMPLETION, "personalization": {"preferences": ["Be brief."], "strategy": "off"}}, {}),
    ],
)
def test_no_flag_when_nothing_is_asked(aligner, fake_upstream, body, headers):
    response = post(aligner, "/completions", body, headers)
    assert response.status_code == 200
    assert "x-perg-aligned" not in response.headers
    assert "personalization" not in orjson.loads(fake_upstream.received[-1].body)


def test_a_get_is_never_flagged(aligner, fake_upstream):
    response = httpx2.get(f"{aligner.base_url}/files", headers={**AUTH, "X-Perg-Preferences": '["Be brief."]'})
    assert response.status_code == 200 and "x-perg-aligned" not in response.headers


@pytest.mark.parametrize(
    ("headers", "extension", "param"),
    [
        ({"X-Perg-Preferences-B64": "%%%"}, None, "X-Perg-Preferences-B64"),
        ({"X-Perg-Preferences": "not json"}, None, "X-Perg-Preferences"),
        ({"X-Perg-Preferences": '["a"]', "X-Perg-Preferences-B64": B64}, None, "X-Perg-Preferences-B64"),
        ({}, {"surprise": 1}, "personalization.surprise"),
        ({}, {"preferences": "be brief"}, "personalization.preferences"),
    ],
)
def test_malformed_personalization_on_a_pass_through_route_is_400(aligner, fake_upstream, headers, extension, param):
    body = {**EMBEDDING, **({"personalization": extension} if extension else {})}
    response = post(aligner, "/embeddings", body, headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert fake_upstream.received == []


def test_chat_completions_are_never_called_unsupported(aligner, fake_upstream):
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    response = post(aligner, "/chat/completions", body, {"X-Perg-Preferences-B64": B64})
    assert response.headers["x-perg-aligned"] == "true"

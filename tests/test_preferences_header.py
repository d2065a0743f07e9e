"""`X-Perg-Preferences-B64`: preferences in any language through a header (base64url of a UTF-8
JSON array), for the clients whose only per-request channel is headers (the AI SDK drops unknown
body keys) and whose HTTP stacks refuse non-Latin-1 header values."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import httpx2
import orjson
import pytest

from proxy.config import PersonalizationSettings
from proxy.errors import InvalidRequest
from proxy.preferences.resolve import decode_preferences_b64, header_preferences
from tests.conftest import CLIENT_KEY

PREFERENCES = ["用中文回答，语气要友好。", "Réponds en français 🇫🇷", "絵文字を使って 😀👍"]
QUESTION = "What is the capital of France?"


def b64url(value: object, *, padding: bool = False) -> str:
    encoded = base64.urlsafe_b64encode(json.dumps(value, ensure_ascii=False).encode()).decode()
    return encoded if padding else encoded.rstrip("=")


def chat(proxy, headers: dict[str, str], **fields) -> httpx2.Response:
    body = {"model": "echo", "messages": [{"role": "user", "content": QUESTION}], **fields}
    return httpx2.post(
        f"{proxy.base_url}/chat/completions",
        content=orjson.dumps(body),
        headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json", **headers},
        timeout=30,
    )


@pytest.fixture
def naive(start_proxy):
    return start_proxy(personalization={"default_strategy": "naive"})


def system_prompt(fake_upstream) -> str:
    (sent,) = fake_upstream.chat_bodies()
    assert sent["messages"][0]["role"] == "system"
    return sent["messages"][0]["content"]


@pytest.mark.parametrize("padding", [False, True])
def test_cjk_and_emoji_preferences_reach_the_model(naive, fake_upstream, padding):
    response = chat(naive, {"X-Perg-Preferences-B64": b64url(PREFERENCES, padding=padding)})
    assert response.status_code == 200, response.text
    assert response.headers["x-perg-aligned"] == "true"
    prompt = system_prompt(fake_upstream)
    for preference in PREFERENCES:
        assert f"- {preference}" in prompt
    sent = fake_upstream.received[-1]
    assert not any(name.lower().startswith("x-perg") for name in sent.headers)  # never forwarded


def test_pref_aligner_rewrites_with_a_header_preference(start_proxy, fake_upstream):
    proxy = start_proxy(personalization={"default_strategy": "pref_aligner"})
    response = chat(proxy, {"X-Perg-Preferences-B64": b64url(PREFERENCES[:1])})
    assert response.headers["x-perg-aligned"] == "true"
    (aligner,) = fake_upstream.chat_bodies("aligner")
    assert PREFERENCES[0] in aligner["messages"][1]["content"]


def test_the_standard_alphabet_is_taken_too():
    value = ["ÿ~~~ ~?>"]  # bytes whose base64 holds '+' or '/' (base64url: '-' or '_')
    raw = json.dumps(value, ensure_ascii=False).encode()
    standard, url = base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()
    assert standard != url
    assert decode_preferences_b64(standard) == decode_preferences_b64(url) == value


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("not base64!", "invalid_base64"),
        ("a", "invalid_base64"),  # a length no base64 text has
        ("YWJj€", "invalid_base64"),
        (base64.urlsafe_b64encode(b"\xff\xfe[]").decode(), "invalid_utf8"),
        (base64.urlsafe_b64encode("[用中文".encode()).decode(), "invalid_json"),
        (b64url({"prefs": ["x"]}), "invalid_type"),
        (b64url(["ok", ""]), "invalid_preference"),
        (b64url(["ok", 3]), "invalid_preference"),
    ],
)
def test_invalid_encodings_are_400_naming_the_header(naive, fake_upstream, value, code):
    response = chat(naive, {"X-Perg-Preferences-B64": value}) if value.isascii() else None
    if response is None:  # a non-ASCII header value: no HTTP client sends it, test the decoder
        with pytest.raises(InvalidRequest) as caught:
            header_preferences({"X-Perg-Preferences-B64": value}, PersonalizationSettings())
        assert (caught.value.param, caught.value.code) == ("X-Perg-Preferences-B64", code)
        return
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith("X-Perg-Preferences-B64") and error["code"] == code
    assert error["type"] == "invalid_request_error" and "X-Perg-Preferences-B64" in error["message"]
    assert fake_upstream.received == []


def test_both_headers_is_400_naming_them(naive, fake_upstream):
    response = chat(naive, {"X-Perg-Preferences": '["Be brief."]', "X-Perg-Preferences-B64": b64url(["Sois bref."])})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "conflicting_headers" and error["param"] == "X-Perg-Preferences-B64"
    assert "'X-Perg-Preferences'" in error["message"] and "'X-Perg-Preferences-B64'" in error["message"]
    assert fake_upstream.received == []


def test_the_body_extension_still_wins_over_the_header(naive, fake_upstream):
    response = chat(naive, {"X-Perg-Preferences-B64": b64url(["HEADER-PREF"])}, personalization={"preferences": ["BODY-PREF"]})
    assert response.status_code == 200
    prompt = system_prompt(fake_upstream)
    assert "BODY-PREF" in prompt and "HEADER-PREF" not in prompt


NODE_CLIENT = """
const [url, key] = process.argv.slice(1);
const preferences = ["用中文回答，语气要友好。"];
const response = await fetch(url + "/chat/completions", {
  method: "POST",
  headers: {
    "Authorization": "Bearer " + key,
    "Content-Type": "application/json",
    "X-Perg-Preferences-B64": Buffer.from(JSON.stringify(preferences)).toString("base64url"),
  },
  body: JSON.stringify({model: "echo", messages: [{role: "user", content: "What is rain?"}]}),
});
console.log(JSON.stringify({status: response.status, aligned: response.headers.get("x-perg-aligned")}));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_a_node_client_sends_a_chinese_preference(naive, fake_upstream):
    """Node's fetch throws on a header value outside Latin-1 (the plain header cannot carry CJK);
    the B64 header, built with Node's own Buffer, gets the preference to the model."""
    result = subprocess.run(
        ["node", "--input-type=module", "-e", NODE_CLIENT, naive.base_url, CLIENT_KEY],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout) == {"status": 200, "aligned": "true"}
    assert "- 用中文回答，语气要友好。" in system_prompt(fake_upstream)

"""Upstream error bodies that are not OpenAI errors never reach a client as they are: the status
is kept, the body becomes the OpenAI shape with a short message, the original goes to the log.
On the pass-through and on the proxy's own stage calls (the chat route's cases: test_api.py)."""

from __future__ import annotations

import httpx2
import orjson
import pytest

from tests.conftest import CLIENT_KEY

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}


def post(proxy, body: dict, headers: dict[str, str] | None = None) -> httpx2.Response:
    return httpx2.post(
        f"{proxy.base_url}/chat/completions",
        content=orjson.dumps(body),
        headers={**AUTH, "Content-Type": "application/json", **(headers or {})},
    )


def test_a_pass_through_error_body_that_is_not_an_openai_error_is_wrapped(proxy, fake_upstream, capsys):
    """The fake's catch-all route answers any status with a JSON echo of the request: not an
    OpenAI error, so the client gets the OpenAI shape, the status kept."""
    response = httpx2.get(f"{proxy.base_url}/batches?status=503", headers=AUTH)
    assert response.status_code == 503
    assert response.json() == {
        "error": {
            "message": "upstream returned 503 with a JSON body that is not an OpenAI error",
            "type": "upstream_error",
            "param": None,
            "code": "upstream_http_503",
        }
    }
    logged = capsys.readouterr().out
    assert "upstream_error_body" in logged and "Authorization" not in logged  # the echoed body: only with logging.log_content


def test_an_openai_error_body_passes_as_it_is(proxy, fake_upstream):
    response = post(proxy, {"model": "error-409", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 409
    assert response.json() == {"error": {"message": "scripted error 409", "type": "fake_error", "param": None, "code": "fake_409"}}


@pytest.mark.parametrize("stream", [False, True])
def test_a_stage_one_traceback_never_reaches_the_client(start_proxy, fake_upstream, stream):
    aligner = start_proxy(personalization={"default_strategy": "pref_aligner"})
    body = {"model": "error-traceback", "messages": [{"role": "user", "content": "x"}], "stream": stream}
    response = post(aligner, body, {"X-Perg-Preferences": '["Be brief."]'})
    assert response.status_code == 500
    assert "Traceback" not in response.text and "/srv/app" not in response.text
    assert response.json()["error"]["message"] == "upstream returned 500 with a stack trace in its error message"
    assert fake_upstream.chat_bodies("chat")  # stage 1 was called (and failed)

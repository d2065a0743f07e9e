"""Routes and bad input: every error is OpenAI-shaped, the right status, never a traceback."""

from __future__ import annotations

import httpx2
import orjson
import pytest

from tests.conftest import ADMIN_KEY, CLIENT_KEY, free_port, wait_for

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}


def post_chat(proxy, content: bytes, headers: dict[str, str] | None = None) -> httpx2.Response:
    return httpx2.post(
        f"{proxy.base_url}/chat/completions",
        content=content,
        headers={**AUTH, "Content-Type": "application/json", **(headers or {})},
        timeout=10,
    )


def assert_openai_error(response: httpx2.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.text
    if param is not None:
        assert body["error"]["param"] == param
        assert param in body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    assert response.headers["x-request-id"]
    assert float(response.headers["x-perg-overhead-ms"]) >= 0
    return body["error"]


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        (b'{"model": "echo", "messages": [', None, "invalid_json"),
        (b"[1, 2]", None, "invalid_json"),
        (b"", None, "invalid_json"),
        (b'"just a string"', None, "invalid_json"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model", "missing_required_parameter"),
        (b'{"model": "echo"}', "messages", "missing_required_parameter"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "model", "invalid_type"),
        (b'{"model": "echo", "messages": "hello"}', "messages", "invalid_type"),
        (b'{"model": "echo", "messages": []}', "messages", "invalid_value"),
        (b'{"model": "echo", "messages": [{"content": "x"}]}', "messages[0].role", "missing_required_parameter"),
        (b'{"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role", "invalid_value"),
        (b'{"model": "echo", "messages": [{"role": "user", "content": 42}]}', "messages[0].content", "invalid_type"),
        (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream", "invalid_type"),
        (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "n": "2"}', "n", "invalid_type"),
        (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "n": 0}', "n", "invalid_value"),
        (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "temperature", "invalid_type"),
        (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "tools": {"a": 1}}', "tools", "invalid_type"),
        (b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "stop": [1]}', "stop", "invalid_type"),
    ],
)
def test_bad_chat_requests_are_400_naming_the_param(proxy, fake_upstream, payload, param, code):
    assert_openai_error(post_chat(proxy, payload), 400, param, code)
    assert fake_upstream.received == []


def test_invalid_utf8_body_is_400(proxy, fake_upstream):
    assert_openai_error(post_chat(proxy, b'{"model": "echo", "messages": "\xff\xfe"}'), 400, code="invalid_json")


def test_body_over_limit_is_413(start_proxy, fake_upstream):
    proxy = start_proxy(server={"max_body_bytes": 1024})
    big = orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": "x" * 2000}]})
    assert_openai_error(post_chat(proxy, big), 413, code="request_too_large")
    passthrough = httpx2.post(f"{proxy.base_url}/embeddings", content=big, headers={**AUTH, "Content-Type": "application/json"})
    assert_openai_error(passthrough, 413)
    assert fake_upstream.received == []


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/nope", 404), ("POST", "/v2/chat", 404), ("DELETE", "/healthz", 405)])
def test_unknown_routes_are_openai_errors(proxy, method, path, status):
    assert_openai_error(httpx2.request(method, proxy.url + path, headers=AUTH), status)


def test_get_chat_completions_is_passed_through(proxy, fake_upstream):
    # OpenAI's GET /v1/chat/completions lists stored completions: not the proxy's route, so forwarded.
    response = httpx2.get(f"{proxy.base_url}/chat/completions?limit=3", headers=AUTH)
    assert response.status_code == 200
    assert response.json()["method"] == "GET" and response.json()["query"] == "limit=3"


def test_path_traversal_is_refused(proxy, fake_upstream):
    response = httpx2.get(proxy.url + "/v1/files/%2e%2e/%2e%2e/admin", headers=AUTH)
    assert_openai_error(response, 404)
    assert fake_upstream.received == []


def test_passthrough_keeps_method_query_and_body(proxy, fake_upstream):
    for method in ("GET", "POST", "DELETE", "PATCH"):
        response = httpx2.request(
            method,
            f"{proxy.base_url}/vector_stores/vs_1/files?limit=2&order=desc&q=a%20b",
            content=b"payload-bytes" if method in ("POST", "PATCH") else None,
            headers={**AUTH, "Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 200, response.text
        echoed = response.json()
        assert echoed["method"] == method
        assert echoed["path"] == "/v1/vector_stores/vs_1/files"
        assert echoed["query"] == "limit=2&order=desc&q=a%20b"
        assert echoed["body"] == ("payload-bytes" if method in ("POST", "PATCH") else "")


def test_passthrough_upstream_status_kept(proxy, fake_upstream):
    response = httpx2.get(f"{proxy.base_url}/batches?status=409", headers=AUTH)
    assert response.status_code == 409


def test_large_download_is_streamed_byte_exact(proxy, fake_upstream):
    size = 6 * 1024 * 1024 + 17
    expected = (bytes(range(256)) * 256 * 100)[:size]
    with httpx2.stream("GET", f"{proxy.base_url}/files/f1/content?size={size}", headers=AUTH, timeout=30) as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers
        chunks = list(response.iter_bytes())
    assert len(chunks) > 1
    assert b"".join(chunks) == expected


def test_download_broken_midway_is_visibly_incomplete(proxy, fake_upstream):
    with pytest.raises(httpx2.HTTPError):
        with httpx2.stream("GET", f"{proxy.base_url}/files/f1/content?size=4000000&break=1", headers=AUTH, timeout=30) as response:
            b"".join(response.iter_bytes())


def test_healthz_and_readyz(start_proxy, proxy):
    assert httpx2.get(proxy.url + "/healthz").json() == {"status": "ok"}
    ready = httpx2.get(proxy.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["upstreams"] == {"main": "ok"}
    assert {"status": "ready", "store": "ok"}.items() <= ready.json().items()
    probed = lambda: httpx2.get(proxy.url + "/readyz").json()["structured_output"]["main"]  # noqa: E731
    assert wait_for(lambda: probed()["result"] == "ok") and probed()["style"] == "json_object_schema"
    down = start_proxy(f"http://127.0.0.1:{free_port()}/v1")
    not_ready = httpx2.get(down.url + "/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["upstreams"]["main"] == "upstream_unreachable"
    assert httpx2.get(down.url + "/healthz").status_code == 200


def test_metrics_exposition(proxy, fake_upstream):
    post_chat(proxy, orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": "x"}]}))
    post_chat(proxy, b"{")
    text = httpx2.get(proxy.url + "/metrics").text
    for name in (
        "perg_requests_total",
        "perg_request_duration_seconds_bucket",
        "perg_overhead_seconds_bucket",
        "perg_upstream_duration_seconds_bucket",
        "perg_requests_in_flight",
        "perg_time_to_first_token_seconds",
    ):
        assert name in text, name
    labels = {"route": "chat_completions", "method": "POST", "strategy": "off"}
    assert wait_for(lambda: proxy.metric("perg_requests_total", {**labels, "status": "200"}) == 1)
    assert proxy.metric("perg_requests_total", {**labels, "status": "400", "strategy": "none"}) == 1
    assert proxy.metric("perg_upstream_duration_seconds_count", {"upstream": "main", "stage": "forward", "outcome": "ok"}) == 1
    assert proxy.metric("perg_tokens_total", {"model": "echo", "stage": "forward", "type": "input"}) == 1


def test_streaming_records_time_to_first_token(proxy, fake_upstream):
    body = orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": "abc def"}], "stream": True})
    assert post_chat(proxy, body).status_code == 200
    assert wait_for(lambda: proxy.metric("perg_time_to_first_token_seconds_count", {"strategy": "off"}) == 1)


def test_admin_routes_need_admin_key(proxy):
    assert_openai_error(httpx2.get(proxy.url + "/perg/profiles", headers=AUTH), 403)
    assert_openai_error(httpx2.get(proxy.url + "/perg/profiles"), 401)
    assert_openai_error(httpx2.get(proxy.url + "/perg/profiles", headers={"Authorization": "Bearer nope"}), 401)
    admin = httpx2.get(proxy.url + "/perg/profiles", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert admin.status_code != 401 and admin.status_code != 403


def test_metric_labels_stay_bounded_whatever_the_client_sends(proxy, fake_upstream):
    for method in ("BREW", "PROPFIND", "X-CUSTOM"):
        httpx2.request(method, f"{proxy.base_url}/anything", headers=AUTH)
    for i in range(60):
        httpx2.post(f"{proxy.base_url}/embeddings", json={"model": f"model-{i}", "input": "x"}, headers=AUTH)
        post_chat(proxy, orjson.dumps({"model": f"chat-model-{i}", "messages": [{"role": "user", "content": "x"}]}))
    text = httpx2.get(proxy.url + "/metrics").text
    methods = {line.split('method="')[1].split('"')[0] for line in text.splitlines() if line.startswith("perg_requests_total{")}
    assert methods <= {"GET", "POST", "other"} and "other" in methods
    models = {line.split('model="')[1].split('"')[0] for line in text.splitlines() if line.startswith("perg_tokens_total{")}
    assert len(models) <= 51 and "other" in models  # the first 50 names, then "other"

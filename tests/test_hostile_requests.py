"""Hostile requests (issue 11), each the attack itself on loopback, bounded: compressed bodies,
keys naming other users, absolute-form request lines, huge valid bodies, odd content parts."""

from __future__ import annotations

import gc
import gzip
import socket
import time

import httpx2
import orjson
import pytest

from tests.conftest import CLIENT_KEY, wait_for

BODY = {"model": "echo", "messages": [{"role": "user", "content": "x"}]}
BOUND_KEY, OPEN_KEY, SHUT_KEY = "sk-bound-alice", "sk-unbound", "sk-no-naming"
KEYS = [CLIENT_KEY, {"key": BOUND_KEY, "user_id": "alice"}, {"key": OPEN_KEY}]


def post(proxy, body: bytes | dict, key: str = CLIENT_KEY, headers: dict[str, str] | None = None, path="/chat/completions"):
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    all_headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})}
    return httpx2.post(proxy.base_url + path, content=content, headers=all_headers, timeout=15)


def test_compressed_request_is_415_and_never_inflated(proxy, fake_upstream):
    bomb = gzip.compress(b"{" + b" " * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB inflated, ~64 KiB sent
    started = time.perf_counter()
    for key in (CLIENT_KEY, "sk-wrong"):
        response = post(proxy, bomb, key=key, headers={"Content-Encoding": "gzip"})
        assert response.status_code == 415, response.text
        assert response.json()["error"]["code"] == "unsupported_content_encoding"
    assert time.perf_counter() - started < 2.0
    honest = post(proxy, gzip.compress(orjson.dumps(BODY)), headers={"Content-Encoding": "gzip"})
    assert honest.status_code == 415  # not 500: the proxy decompresses no request body
    liar = post(proxy, b"not gzip at all", headers={"Content-Encoding": "gzip"})
    assert liar.status_code == 415
    passthrough = post(proxy, gzip.compress(b'{"input": "x"}'), headers={"Content-Encoding": "br"}, path="/embeddings")
    assert passthrough.status_code == 415
    assert fake_upstream.received == []
    assert post(proxy, BODY, headers={"Content-Encoding": "identity"}).status_code == 200


@pytest.fixture
def keyed(start_proxy, fake_upstream):
    return keyed_proxy(start_proxy, KEYS)


def keyed_proxy(start_proxy, keys):
    proxy = start_proxy(auth={"client_keys": keys, "admin_key": "admin-secret"})
    for user, text in (("alice", "alice likes haiku"), ("bob", "bob's secret preference")):
        put = httpx2.put(
            f"{proxy.url}/perg/profiles/{user}", json={"preferences": [text]}, headers={"Authorization": "Bearer admin-secret"}
        )
        assert put.status_code == 200
    return proxy


NAMINGS = [
    ({"personalization": {"user_id": "bob"}}, {}),
    ({}, {"X-Perg-User": "bob"}),
    ({"user": "bob"}, {}),
]


@pytest.mark.parametrize(("extra", "headers"), NAMINGS)
def test_a_bound_key_cannot_name_another_user(keyed, fake_upstream, extra, headers):
    response = post(keyed, {**BODY, **extra}, key=BOUND_KEY, headers=headers)
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "user_not_allowed"
    assert not any(b"bob" in item.body for item in fake_upstream.received)


def test_a_bound_key_may_name_itself_and_gets_its_own_preferences(keyed, fake_upstream):
    body = {**BODY, "user": "alice", "personalization": {"user_id": "alice", "strategy": "naive"}}
    response = post(keyed, body, key=BOUND_KEY, headers={"X-Perg-User": "alice"})
    assert response.status_code == 200, response.text
    sent = b"".join(item.body for item in fake_upstream.received)
    assert b"alice likes haiku" in sent and b"bob" not in sent


@pytest.mark.parametrize(("extra", "headers"), NAMINGS)
def test_unbound_keys_name_users_unless_turned_off(keyed, start_proxy, fake_upstream, extra, headers):
    naive = {"personalization": {**extra.get("personalization", {}), "strategy": "naive"}}
    body = {**BODY, **extra, **naive}
    assert post(keyed, body, key=OPEN_KEY, headers=headers).status_code == 200
    assert any(b"bob's secret preference" in item.body for item in fake_upstream.received)
    shut = keyed_proxy(start_proxy, [{"key": SHUT_KEY, "may_name_users": False}])
    fake_upstream.clear()
    refused = post(shut, body, key=SHUT_KEY, headers=headers)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "user_not_allowed"
    assert fake_upstream.received == []


def test_profile_routes_stay_admin_only_for_bound_keys(keyed):
    for key in (BOUND_KEY, OPEN_KEY):
        response = httpx2.get(f"{keyed.url}/perg/profiles/bob", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 403


def raw_exchange(port: int, request: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        (b"http://x/v1/p22", "/v1/p22"),
        (b"https://evil:443/v1/files/a?b=c", "/v1/files/a"),
        (b"http://127.0.0.1/v1/models/../../admin", None),
    ],
)
def test_absolute_form_request_line_stays_inside_v1(proxy, fake_upstream, target, forwarded):
    request = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    request += f"Authorization: Bearer {CLIENT_KEY}\r\n\r\n".encode()
    answer = raw_exchange(proxy.server.port, request)
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    if forwarded is None:
        assert answer.startswith(b"HTTP/1.1 404") and fake_upstream.received == []
    else:
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert [item.path for item in fake_upstream.received] == [forwarded]


ONE = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "echo", "messages": ONE * 300_000}, "messages"),
        ({"model": "echo", "messages": ONE, "logit_bias": {str(i): 1 for i in range(900_000)}}, "logit_bias"),
        ({"model": "echo", "messages": ONE * 5000}, "messages"),
        ({"model": "echo", "messages": ONE, "tools": [{"type": "function", "function": {"name": "f"}}] * 129}, "tools"),
        ({"model": "echo", "messages": ONE, "logit_bias": {str(i): 1 for i in range(1025)}}, "logit_bias"),
        ({"model": "echo", "messages": ONE, "extra": [[0] * 10] * 300_000}, None),
    ],
)
def test_big_valid_bodies_are_capped_without_holding_the_loop(proxy, fake_upstream, body, param):
    """The attack: a 10 MB body of tiny values. Refused with a 400 naming the field, while a small
    request sent meanwhile is answered at once (the loop is not held for seconds)."""
    import threading

    content = orjson.dumps(body)  # encoded before the timing: the test's own work holds this process's GIL, as the proxy thread's does
    small: list[float] = []

    def small_requests(stop: threading.Event) -> None:
        with httpx2.Client(timeout=15) as client:
            while not stop.is_set():
                started = time.perf_counter()
                client.post(proxy.base_url + "/chat/completions", json=BODY, headers={"Authorization": f"Bearer {CLIENT_KEY}"})
                small.append(time.perf_counter() - started)

    stop = threading.Event()
    thread = threading.Thread(target=small_requests, args=(stop,))
    # The proxy runs in a thread of this test process: a full collection of pytest's whole heap
    # (every module and fixture of the session) would stop it for longer than the limit, which
    # says nothing about the proxy. A served proxy collects its own small, frozen heap.
    gc.collect()
    gc.disable()
    thread.start()
    try:
        wait_for(lambda: len(small) >= 3)
        small.clear()
        response = post(proxy, content)
        wait_for(lambda: len(small) >= 2)
    finally:
        gc.enable()
        stop.set()
        thread.join(15)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert not any(len(item.body) > 1_000_000 for item in fake_upstream.received)
    assert max(small) < 0.3, f"a small request waited {max(small):.3f} s"


def test_the_depth_check_passes_scalar_fields(proxy):
    """Found by the fuzzer: a scalar field beside enough containers to be depth-checked was a 500."""
    body = {"model": "echo", "messages": ONE * 70, "user": None, "temperature": 1, "stop": ["a"]}
    assert post(proxy, body).status_code == 200


@pytest.mark.parametrize("depth", [100, 254, 600, 1020])
def test_deep_extra_fields_are_400_even_when_the_body_is_rewritten(proxy, depth):
    """orjson reads up to 1024 levels and writes only 254: with the extension taken out the body is
    written again, which was a 500."""
    nested = "[" * depth + "]" * depth
    raw = f'{{"model": "echo", "messages": [{{"role": "user", "content": "x"}}], "personalization": {{"strategy": "off"}}, "extra": {nested}}}'
    response = post(proxy, raw.encode())
    assert response.status_code == 400, response.text
    assert response.json()["error"] == {
        "message": "'extra' is nested more than 64 levels deep.",
        "type": "invalid_request_error",
        "param": "extra",
        "code": "too_deep",
    }


@pytest.mark.parametrize("text", [1, None, ["x"], {"a": 1}, True])
def test_text_parts_must_carry_a_string(proxy, fake_upstream, text):
    body = {"model": "echo", "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}
    for strategy in ("off", "naive", "pref_aligner"):
        body["personalization"] = {"strategy": strategy, "preferences": ["be brief"]}
        response = post(proxy, body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "messages[0].content[0].text"
    assert fake_upstream.received == []


ALIGNER = {"model": "script:stage1", "messages": ONE, "personalization": {"strategy": "pref_aligner", "preferences": ["be brief"]}}


@pytest.mark.parametrize(
    "answer",
    [{"choices": "x"}, {"choices": ["x"]}, {"choices": [{"index": 0, "message": "x"}]}, {"choices": [], "usage": "x"}],
)
def test_a_malformed_stage_1_answer_is_502(start_proxy, fake_upstream, answer):
    from tests.fake_upstream import json_body

    fake_upstream.scripts["stage1"] = lambda body: json_body({"id": "c", "object": "chat.completion", **answer})
    proxy = start_proxy(personalization={"default_strategy": "off", "relevance_gate": {"mode": "off"}})
    response = post(proxy, ALIGNER)
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "bad_upstream_response"
    streamed = post(proxy, {**ALIGNER, "stream": True})
    assert b"bad_upstream_response" in streamed.content and b"Traceback" not in streamed.content


@pytest.mark.parametrize("stream", [False, True])
def test_stage_2_fans_out_no_wider_than_the_request_asked(start_proxy, fake_upstream, stream):
    from tests.fake_upstream import completion, json_body, pipeline_role

    def stage1(body):
        if pipeline_role(body) != "chat":
            return "Rewritten."
        data = completion(body, {"role": "assistant", "content": "draft"})
        data["choices"] = [{**data["choices"][0], "index": i} for i in range(50)]
        return json_body(data)

    fake_upstream.scripts["stage1"] = stage1
    proxy = start_proxy(personalization={"default_strategy": "off", "relevance_gate": {"mode": "off"}})
    response = post(proxy, {**ALIGNER, "n": 2, "stream": stream})
    assert response.status_code == 200, response.text
    assert len(fake_upstream.chat_bodies("aligner")) == 2
    if not stream:
        assert len(response.json()["choices"]) == 2

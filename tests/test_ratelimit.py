"""Per-key rate limits: requests and tokens per minute, in-process and shared through Redis."""

from __future__ import annotations

import os
import uuid

import httpx2
import pytest

from tests.conftest import ADMIN_KEY, CLIENT_KEY, free_port

REDIS_URL = os.environ.get("PERG_TEST_REDIS_URL")
BODY = {"model": "echo", "messages": [{"role": "user", "content": "one two three"}]}


def call(proxy, key: str = CLIENT_KEY) -> httpx2.Response:
    return httpx2.post(f"{proxy.base_url}/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key}"})


def limited(start_proxy, **limits):
    keys = [CLIENT_KEY, "sk-other", {"key": "sk-tight", "requests_per_minute": 1}]
    return start_proxy(auth={"client_keys": keys, "admin_key": ADMIN_KEY, "rate_limits": limits})


def test_requests_per_minute_per_key(start_proxy, fake_upstream):
    proxy = limited(start_proxy, requests_per_minute=3)
    assert [call(proxy).status_code for _ in range(3)] == [200, 200, 200]
    refused = call(proxy)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error" and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert call(proxy, "sk-other").status_code == 200  # another key has its own budget
    assert [call(proxy, "sk-tight").status_code for _ in range(2)] == [200, 429]  # per-key override
    assert len(fake_upstream.received) == 5  # refused requests never reach the upstream
    assert proxy.metric("perg_rate_limited_total", {"kind": "requests"}) == 2


def test_refused_requests_do_not_use_up_the_budget(start_proxy, fake_upstream):
    proxy = limited(start_proxy, requests_per_minute=2)
    codes = [call(proxy).status_code for _ in range(6)]
    assert codes == [200, 200, 429, 429, 429, 429]


def test_tokens_per_minute(start_proxy, fake_upstream):
    proxy = limited(start_proxy, tokens_per_minute=10)
    # the fake reports 3 prompt + 3 completion tokens per call: 6, then 12 >= 10
    assert [call(proxy).status_code for _ in range(3)] == [200, 200, 429]
    assert proxy.metric("perg_rate_limited_total", {"kind": "tokens"}) == 1


def test_no_limits_by_default(start_proxy, fake_upstream):
    proxy = start_proxy()
    assert {call(proxy).status_code for _ in range(20)} == {200}


def test_limits_shared_across_replicas_through_redis(start_proxy, fake_upstream):
    if not REDIS_URL:
        pytest.skip("shared rate limits need PERG_TEST_REDIS_URL (set by .ci/run)")
    prefix = f"perg-test-{uuid.uuid4().hex[:8]}"
    replicas = [limited(start_proxy, requests_per_minute=4, redis_url=REDIS_URL, key_prefix=prefix) for _ in range(2)]
    codes = [call(replicas[i % 2]).status_code for i in range(4)]
    assert codes == [200, 200, 200, 200]
    assert call(replicas[0]).status_code == 429 and call(replicas[1]).status_code == 429


def test_redis_down_fails_open_and_counts(start_proxy, fake_upstream):
    proxy = limited(start_proxy, requests_per_minute=1, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert [call(proxy).status_code for _ in range(3)] == [200, 200, 200]
    assert sum(proxy.metric("perg_rate_limit_errors_total", {"reason": r}) for r in ("ConnectionError", "TimeoutError")) >= 3

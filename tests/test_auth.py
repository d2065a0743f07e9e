"""Client keys, admin key, and which headers cross the proxy in each direction."""

from __future__ import annotations

import hmac

import httpx2
import openai
import pytest

from proxy.config import AuthSettings
from proxy.errors import AuthenticationFailed, PermissionDenied
from proxy.server.auth import Authenticator, bearer_token
from proxy.upstream.headers import client_response_headers, upstream_request_headers
from tests.conftest import CLIENT_KEY, UPSTREAM_KEY

BODY = {"model": "echo", "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Basic abc", "Bearer wrong", f"Bearer {CLIENT_KEY}x"])
def test_missing_or_wrong_client_key_is_401(proxy, fake_upstream, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = httpx2.post(f"{proxy.base_url}/chat/completions", json=BODY, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert fake_upstream.received == []


def test_sdk_sees_authentication_error(proxy):
    with openai.OpenAI(base_url=proxy.base_url, api_key="sk-wrong", max_retries=0) as c, pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(**BODY)


def test_empty_key_list_means_open(start_proxy, fake_upstream):
    proxy = start_proxy(auth={"client_keys": [], "admin_key": ""})
    response = httpx2.post(f"{proxy.base_url}/chat/completions", json=BODY)
    assert response.status_code == 200


def test_keys_are_compared_in_constant_time(monkeypatch):
    """Every configured key is compared with hmac.compare_digest on every check, match or not."""
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr("proxy.server.auth.hmac.compare_digest", counting)
    auth = Authenticator(AuthSettings(client_keys=["k1", "k2", "k3"], admin_key="adm"))
    for token in ("k1", "k3", "nope", "k1-longer-guess"):
        calls.clear()
        try:
            auth.check(f"Bearer {token}", admin=False)
        except AuthenticationFailed:
            pass
        assert calls == [(32, 32)] * 3  # digests of equal length, all keys, no early exit


def test_admin_key_checks():
    auth = Authenticator(AuthSettings(client_keys=["k1"], admin_key="adm"))
    assert auth.check("Bearer adm", admin=True) is None
    with pytest.raises(PermissionDenied):
        auth.check("Bearer k1", admin=True)
    with pytest.raises(AuthenticationFailed):
        auth.check("Bearer adm", admin=False)
    with pytest.raises(PermissionDenied):
        Authenticator(AuthSettings(client_keys=["k1"])).check("Bearer anything", admin=True)


def test_bearer_token_parsing():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Token abc") is None
    assert bearer_token(None) is None


def test_upstream_gets_proxy_key_and_no_hop_by_hop_or_perg_headers(proxy, fake_upstream):
    headers = {
        "Authorization": f"Bearer {CLIENT_KEY}",
        "Connection": "keep-alive, X-Drop-Me",
        "X-Drop-Me": "1",
        "TE": "trailers",
        "Proxy-Authorization": "Basic c2VjcmV0",
        "Upgrade": "h2c",
        "X-Perg-Preferences": '["secret preference"]',
        "X-Perg-User": "alice",
        "Cookie": "session=1",
        "OpenAI-Organization": "org-client",
        "api-key": "client-azure-key",
        "OpenAI-Beta": "assistants=v2",
        "X-Custom": "not on the allowlist",
        "X-Goog-Api-Key": "client-google-key",
        "Ocp-Apim-Subscription-Key": "client-apim-key",
        "anthropic-api-key": "client-anthropic-key",
        "X-Auth-Token": "client-token",
        "X-Amz-Security-Token": "client-aws-token",
        "X-Forwarded-For": "10.0.0.1",
        "Forwarded": "for=10.0.0.1",
        "X-Request-ID": "trace-123",
    }
    response = httpx2.post(f"{proxy.base_url}/chat/completions", json=BODY, headers=headers)
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-123"
    sent = {name.lower(): value for name, value in fake_upstream.received[-1].headers.items()}
    assert sent["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent["openai-beta"] == "assistants=v2"
    assert sent["x-client-request-id"] == "trace-123"
    for dropped in (
        "x-drop-me",
        "te",
        "proxy-authorization",
        "upgrade",
        "x-perg-preferences",
        "x-perg-user",
        "cookie",
        "openai-organization",
        "api-key",
        "x-custom",
        "x-goog-api-key",
        "ocp-apim-subscription-key",
        "anthropic-api-key",
        "x-auth-token",
        "x-amz-security-token",
        "x-forwarded-for",
        "forwarded",
    ):
        assert dropped not in sent, dropped
    assert CLIENT_KEY not in str(sent)


def test_invalid_request_id_is_replaced(proxy, fake_upstream):
    response = httpx2.post(
        f"{proxy.base_url}/chat/completions",
        json=BODY,
        headers={"Authorization": f"Bearer {CLIENT_KEY}", "X-Request-ID": "bad id\twith spaces"},
    )
    assert response.headers["x-request-id"] != "bad id\twith spaces"
    assert len(response.headers["x-request-id"]) == 32


def test_header_helpers():
    sent = upstream_request_headers(
        {"Connection": "close, Accept-Language", "Accept-Language": "de", "Accept": "x/y", "X-B": "2", "Host": "h"},
        "rid",
        "key",
        {"OpenAI-Organization": "org"},
    )
    assert dict(sent) == {"Accept": "x/y", "OpenAI-Organization": "org", "X-Client-Request-Id": "rid", "Authorization": "Bearer key"}
    back = client_response_headers(
        {"x-request-id": "up", "Transfer-Encoding": "chunked", "Set-Cookie": "a", "retry-after": "3", "Content-Type": "x"}
    )
    assert dict(back) == {"x-upstream-request-id": "up", "retry-after": "3", "Content-Type": "x"}

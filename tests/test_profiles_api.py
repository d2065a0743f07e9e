"""`/perg/profiles` over HTTP, on each backend: CRUD, pagination, validation, concurrent PATCHes."""

from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg
import httpx2
import pytest

from tests.conftest import ADMIN_KEY

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
POSTGRES_DSN = os.environ.get("PERG_TEST_POSTGRES_DSN")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def profiles_proxy(request, start_proxy, tmp_path):
    backend = request.param
    if backend == "memory":
        yield start_proxy()
        return
    if backend == "sqlite":
        yield start_proxy(profiles={"backend": "sqlite", "path": str(tmp_path / "profiles.db")})
        return
    if not POSTGRES_DSN:
        pytest.skip("PostgreSQL profile tests need PERG_TEST_POSTGRES_DSN (set by .ci/run)")
    schema = f"perg_test_{uuid.uuid4().hex[:12]}"
    yield start_proxy(profiles={"backend": "postgres", "dsn": POSTGRES_DSN, "schema_name": schema})

    async def drop() -> None:
        connection = await asyncpg.connect(POSTGRES_DSN)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await connection.close()

    asyncio.run(drop())


def url(proxy, user: str = "") -> str:
    return f"{proxy.url}/perg/profiles" + (f"/{user}" if user else "")


def test_put_get_patch_delete(profiles_proxy):
    put = httpx2.put(url(profiles_proxy, "alice"), json={"preferences": ["Be brief.", "Use metric units."]}, headers=ADMIN)
    assert put.status_code == 200, put.text
    profile = put.json()
    assert profile["user_id"] == "alice" and profile["object"] == "profile"
    assert [p["text"] for p in profile["preferences"]] == ["Be brief.", "Use metric units."]
    first_id = profile["preferences"][0]["id"]
    assert all({"id", "text", "created_at", "updated_at"} <= set(p) for p in profile["preferences"])

    patched = httpx2.patch(url(profiles_proxy, "alice"), json={"add": ["Answer in French."], "remove": [first_id]}, headers=ADMIN).json()
    assert [p["text"] for p in patched["preferences"]] == ["Use metric units.", "Answer in French."]
    assert patched["updated_at"] >= profile["updated_at"]

    assert httpx2.get(url(profiles_proxy, "alice"), headers=ADMIN).json() == patched
    deleted = httpx2.delete(url(profiles_proxy, "alice"), headers=ADMIN)
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert httpx2.get(url(profiles_proxy, "alice"), headers=ADMIN).status_code == 404
    assert httpx2.delete(url(profiles_proxy, "alice"), headers=ADMIN).status_code == 404


def test_paginated_list(profiles_proxy):
    for user in ("u3", "u1", "u5", "u2", "u4"):
        httpx2.put(url(profiles_proxy, user), json={"preferences": [f"pref of {user}"]}, headers=ADMIN)
    first = httpx2.get(url(profiles_proxy) + "?limit=2", headers=ADMIN).json()
    assert first["object"] == "list" and [p["user_id"] for p in first["data"]] == ["u1", "u2"]
    assert first["has_more"] is True and first["last_id"] == "u2"
    second = httpx2.get(url(profiles_proxy) + f"?limit=2&after={first['last_id']}", headers=ADMIN).json()
    assert [p["user_id"] for p in second["data"]] == ["u3", "u4"]
    third = httpx2.get(url(profiles_proxy) + "?limit=2&after=u4", headers=ADMIN).json()
    assert [p["user_id"] for p in third["data"]] == ["u5"] and third["has_more"] is False


def test_concurrent_patches_lose_nothing(profiles_proxy):
    async def hammer() -> list[int]:
        async with httpx2.AsyncClient(timeout=60) as client:
            responses = await asyncio.gather(
                *(client.patch(url(profiles_proxy, "busy"), json={"add": [f"preference {i}"]}, headers=ADMIN) for i in range(30))
            )
        return [response.status_code for response in responses]

    assert asyncio.run(hammer()) == [200] * 30
    texts = [p["text"] for p in httpx2.get(url(profiles_proxy, "busy"), headers=ADMIN).json()["preferences"]]
    assert sorted(texts) == sorted(f"preference {i}" for i in range(30))


@pytest.mark.parametrize(
    ("method", "body", "param"),
    [
        ("PUT", {}, "preferences"),
        ("PUT", {"preferences": "x"}, "preferences"),
        ("PUT", {"preferences": ["ok", ""]}, "preferences[1]"),
        ("PUT", {"preferences": ["x"] * 33}, "preferences"),
        ("PUT", {"preferences": ["x"], "extra": 1}, "extra"),
        ("PATCH", {"add": [3]}, "add[0]"),
        ("PATCH", {"remove": "pref_1"}, "remove"),
        ("PATCH", {"remove": ["pref_does_not_exist"]}, "remove"),
        ("PUT", {"preferences": ["nul \x00 char"]}, "preferences[0]"),
    ],
)
def test_bad_profile_bodies(profiles_proxy, method, body, param):
    response = httpx2.request(method, url(profiles_proxy, "bob"), json=body, headers=ADMIN)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("user", ["%0D", "%20%09", "%E3%80%80", "a%00b", "x" * 257])
def test_invalid_user_ids_are_400_on_every_profile_route(profiles_proxy, user):
    """Only whitespace, U+0000 or over 256 characters: not a user id (proxy/openapi.yaml's UserId),
    on every backend and route alike, never a 404 or a store error."""
    for method, body in (("GET", None), ("PUT", {"preferences": ["a"]}), ("PATCH", {"add": ["a"]}), ("DELETE", None)):
        response = httpx2.request(method, url(profiles_proxy, user), json=body, headers=ADMIN)
        assert response.status_code == 400, (method, response.text)
        assert response.json()["error"]["param"] == "user_id" and response.json()["error"]["code"] == "invalid_user"


def test_user_ids_keep_their_spaces_and_odd_characters(profiles_proxy):
    for raw, user in (("%20a%20", " a "), ("%E2%80%8B", "\u200b"), ("%EF%BB%BF", "\ufeff"), ("x" * 256, "x" * 256)):
        assert httpx2.put(url(profiles_proxy, raw), json={"preferences": ["a"]}, headers=ADMIN).status_code == 200, raw
        assert httpx2.get(url(profiles_proxy, raw), headers=ADMIN).json()["user_id"] == user


def test_patch_over_the_limit_adds_nothing(profiles_proxy):
    httpx2.put(url(profiles_proxy, "full"), json={"preferences": [f"p{i}" for i in range(31)]}, headers=ADMIN)
    response = httpx2.patch(url(profiles_proxy, "full"), json={"add": ["a", "b"]}, headers=ADMIN)
    assert response.status_code == 400
    assert len(httpx2.get(url(profiles_proxy, "full"), headers=ADMIN).json()["preferences"]) == 31


def test_profile_routes_need_the_admin_key(profiles_proxy):
    assert httpx2.get(url(profiles_proxy)).status_code == 401
    assert (
        httpx2.put(url(profiles_proxy, "x"), json={"preferences": ["a"]}, headers={"Authorization": "Bearer sk-client-1"}).status_code
        == 403
    )


def test_invalid_list_parameters(profiles_proxy):
    for query in ("limit=0", "limit=abc", "limit=101", "limit=%C2%B2", "limit=%D9%A4", "limit=" + "9" * 5000):  # ², ٤
        response = httpx2.get(url(profiles_proxy) + f"?{query}", headers=ADMIN)
        assert response.status_code == 400 and response.json()["error"]["param"] == "limit"


def test_store_down_requests_still_answered_and_counted(start_proxy, fake_upstream):
    from tests.conftest import CLIENT_KEY, free_port

    proxy = start_proxy(
        personalization={"default_strategy": "naive"},
        profiles={"backend": "postgres", "dsn": f"postgresql://perg@127.0.0.1:{free_port()}/none", "connect_timeout_seconds": 1},
    )
    response = httpx2.post(
        f"{proxy.base_url}/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}], "user": "alice"},
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
    )
    assert response.status_code == 200
    assert response.headers["x-perg-aligned"] == "false"  # answered without stored preferences
    assert proxy.metric("perg_profile_lookup_errors_total", {"reason": "unavailable"}) == 1
    ready = httpx2.get(proxy.url + "/readyz")
    assert ready.status_code == 503 and ready.json()["store"] == "store_unavailable"
    write = httpx2.put(url(proxy, "alice"), json={"preferences": ["a"]}, headers=ADMIN)
    assert write.status_code == 503 and write.json()["error"]["code"] == "store_unavailable"

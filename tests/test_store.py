"""The profile store's semantics, the same on every backend (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import pytest

from proxy.config import ProfileSettings
from proxy.preferences import PreferenceNotFound, Store, StoreUnavailable, UnstorableText, open_store
from proxy.preferences.memory import MemoryStore
from proxy.preferences.models import utcnow
from proxy.preferences.postgres import PostgresStore
from proxy.preferences.sqlite import SqliteStore
from tests.store_fixtures import Stores

PREFERENCE_ID = re.compile(r"^pref_[0-9a-f]{16}$")
TRICKY_TEXTS = [
    "I am vegetarian 🥦 and allergic to peanuts",
    "Réponds en français, s'il te plaît — avec des accents: àéîõü ç",
    "Antworte kurz. 日本語でも大丈夫。 中文也可以。 한국어",
    "עברית וערבית: مرحبا بالعالم",
    "e\u0301 (e + combining acute) vs \u00e9; 👩‍👩‍👧 (ZWJ family); 🏳️‍🌈; \u200b zero width",
    "quotes ' \" ` and backslashes \\ \\\\ and %s %(x)s $1 ? :name",
    "'); DROP TABLE preferences; --",
    "line one\nline two\r\n\ttabbed   trailing spaces   ",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 outside the BMP: 𝄞 🀄 \U0010fffd",
    "x" * 100_000,
    "",
]


async def test_missing_user_has_no_profile_and_no_texts(store: Store):
    assert await store.get("nobody") is None
    assert await store.preference_texts("nobody") == ()
    assert await store.delete("nobody") is False


async def test_put_stores_texts_in_order_with_ids_and_timestamps(store: Store):
    before = utcnow()
    profile = await store.put("alice", ["short answers", "metric units", "no jargon"])
    assert profile.user_id == "alice"
    assert profile.texts == ("short answers", "metric units", "no jargon")
    assert all(PREFERENCE_ID.match(p.id) for p in profile.preferences)
    assert len({p.id for p in profile.preferences}) == 3
    assert all(before <= p.created_at == p.updated_at <= profile.updated_at <= utcnow() for p in profile.preferences)
    assert await store.get("alice") == profile
    assert await store.preference_texts("alice") == profile.texts


async def test_put_keeps_ids_of_unchanged_texts_and_replaces_the_rest(store: Store):
    first = await store.put("alice", ["a", "b", "a"])
    second = await store.put("alice", ["c", "a", "a", "a"])
    assert second.texts == ("c", "a", "a", "a")
    assert second.preferences[1] == first.preferences[0]
    assert second.preferences[2] == first.preferences[2]
    old_ids = {p.id for p in first.preferences}
    assert second.preferences[0].id not in old_ids and second.preferences[3].id not in old_ids
    assert first.preferences[1].id not in {p.id for p in second.preferences}
    assert second.updated_at >= first.updated_at
    assert await store.put("alice", list(second.texts)) == (await store.get("alice"))
    emptied = await store.put("alice", [])
    assert emptied.preferences == () and await store.get("alice") == emptied


async def test_patch_creates_the_profile_appends_and_removes(store: Store):
    created = await store.patch("bob", add=["one", "two"])
    assert created.texts == ("one", "two")
    one, two = created.preferences
    patched = await store.patch("bob", add=["three", "four"], remove=[one.id])
    assert patched.texts == ("two", "three", "four")
    assert patched.preferences[0] == two
    assert await store.get("bob") == patched
    assert (await store.patch("bob")).texts == ("two", "three", "four")


async def test_patch_removing_an_unknown_id_changes_nothing(store: Store):
    before = await store.put("carol", ["keep me"])
    with pytest.raises(PreferenceNotFound) as raised:
        await store.patch("carol", add=["new"], remove=[before.preferences[0].id, "pref_0000000000000000"])
    assert raised.value.status == 404 and raised.value.param == "remove"
    assert "pref_0000000000000000" in raised.value.message
    assert await store.get("carol") == before
    with pytest.raises(PreferenceNotFound):
        await store.patch("dave", add=["x"], remove=["pref_0000000000000000"])
    assert await store.get("dave") is None


async def test_an_id_is_not_removed_twice(store: Store):
    profile = await store.put("erin", ["a", "b"])
    first = profile.preferences[0].id
    await store.patch("erin", remove=[first])
    with pytest.raises(PreferenceNotFound):
        await store.patch("erin", remove=[first])
    assert await store.preference_texts("erin") == ("b",)


async def test_text_is_stored_exactly(stores: Stores):
    store = await stores.open()
    profile = await store.put("unicode", TRICKY_TEXTS)
    assert profile.texts == tuple(TRICKY_TEXTS)
    assert await store.preference_texts("unicode") == tuple(TRICKY_TEXTS)
    assert (await store.get("unicode")) == profile
    user = "用户 ✓ 'quoted' \"double\""
    assert (await store.patch(user, add=["x"])).user_id == user
    assert [p.user_id for p in (await store.list_profiles(10))[0]] == ["unicode", user]


@pytest.mark.parametrize(("text", "what"), [("a\x00b", "U+0000"), ("a\ud800b", "surrogate")])
async def test_text_no_backend_can_keep_is_refused_and_nothing_is_written(store: Store, text: str, what: str):
    await store.put("frank", ["before"])
    for attempt in (store.put("frank", ["ok", text]), store.patch("frank", add=[text]), store.put(text, ["x"])):
        with pytest.raises(UnstorableText) as raised:
            await attempt
        assert raised.value.status == 400 and what in raised.value.message
    assert await store.preference_texts("frank") == ("before",)
    assert [p.user_id for p in (await store.list_profiles(10))[0]] == ["frank"]


async def test_reads_with_an_unstorable_user_id_find_nobody(store: Store):
    await store.put("frank", ["x"])
    assert await store.get("fr\x00ank") is None
    assert await store.preference_texts("fr\x00ank") == ()
    assert await store.preference_texts("\udcff") == ()
    assert await store.delete("fr\x00ank") is False
    with pytest.raises(UnstorableText):
        await store.list_profiles(10, after="\x00")
    with pytest.raises(UnstorableText):
        await store.list_samples(strategy="\x00")
    assert await store.preference_texts("frank") == ("x",)


async def test_cancelled_calls_leave_the_store_consistent_and_usable(store: Store):
    tasks = [asyncio.create_task(store.patch("gus", add=[f"p{i}"])) for i in range(20)]
    await asyncio.sleep(0)
    for task in tasks[::2]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    finished = [r for r in results if not isinstance(r, BaseException)]
    assert all(isinstance(r, asyncio.CancelledError) for r in results if isinstance(r, BaseException))
    texts = await store.preference_texts("gus")
    assert len(set(texts)) == len(texts) and {f"p{i}" for i in range(1, 20, 2)} <= set(texts)
    assert len(texts) >= len(finished)
    assert (await store.patch("gus", add=["after"])).texts[-1] == "after"


async def test_delete_removes_the_profile(store: Store):
    await store.put("gina", ["x"])
    await store.put("hank", ["y"])
    assert await store.delete("gina") is True
    assert await store.get("gina") is None
    assert await store.preference_texts("gina") == ()
    assert await store.delete("gina") is False
    assert await store.preference_texts("hank") == ("y",)


async def test_list_profiles_pages_by_user_id(store: Store):
    users = [f"user-{i:02d}" for i in range(7)]
    for user in reversed(users):
        await store.put(user, [f"pref of {user}", "second"])
    await store.put("user-03", [])
    seen, after, pages = [], None, 0
    while pages < 10:
        page, has_more = await store.list_profiles(3, after)
        pages += 1
        seen += page
        if not has_more:
            break
        after = page[-1].user_id
    assert pages == 3
    assert [p.user_id for p in seen] == users
    assert seen[0].texts == ("pref of user-00", "second") and seen[3].texts == ()
    assert seen == [await store.get(user) for user in users]
    assert [p.user_id for p in (await store.list_profiles(100, "user-035"))[0]] == users[4:]
    assert await store.list_profiles(100, "zzz") == ([], False)
    with pytest.raises(ValueError):
        await store.list_profiles(0)


async def test_a_returned_write_is_there_after_close_and_reopen(shared_stores: Stores):
    stores = shared_stores
    first = await stores.open()
    put = await first.put("ivy", TRICKY_TEXTS[:3])
    patched = await first.patch("ivy", add=["added"], remove=[put.preferences[1].id])
    await first.close()
    second = await stores.open()
    assert await second.get("ivy") == patched


async def test_opening_twice_migrates_once(stores: Stores):
    first = await stores.open()
    await first.open()
    second = await stores.open()
    await first.put("jack", ["x"])
    assert await second.preference_texts("jack") == (() if stores.backend == "memory" else ("x",))
    if stores.backend == "sqlite":
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(stores.path)) as raw:
            assert raw.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [(1,), (2,), (3,), (4,)]
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    if stores.backend == "postgres":
        assert await _postgres_versions(stores) == [1, 2, 3, 4]


async def _postgres_versions(stores: Stores) -> list[int]:
    import asyncpg

    from tests.store_fixtures import POSTGRES_DSN

    connection = await asyncpg.connect(POSTGRES_DSN)
    try:
        rows = await connection.fetch(f'SELECT version FROM "{stores.schema}".schema_version ORDER BY version')
    finally:
        await connection.close()
    return [row[0] for row in rows]


async def test_a_closed_store_is_unavailable(stores: Stores):
    store = await stores.open()
    await store.ping()
    await store.close()
    await store.close()
    if stores.backend == "memory":
        return
    with pytest.raises(StoreUnavailable) as raised:
        await store.preference_texts("x")
    assert raised.value.status == 503


def test_open_store_picks_the_configured_backend(tmp_path):
    assert isinstance(open_store(ProfileSettings(backend="memory")), MemoryStore)
    sqlite = open_store(ProfileSettings(backend="sqlite", path=tmp_path / "p.db"))
    assert isinstance(sqlite, SqliteStore) and sqlite.path == tmp_path / "p.db"
    postgres = open_store(ProfileSettings(backend="postgres", dsn="postgresql://u:secret@db.example:5433/perg"))
    assert isinstance(postgres, PostgresStore)
    assert postgres.where == "postgresql://db.example:5433/perg" and "secret" not in postgres.where


async def test_timestamps_are_utc_and_keep_microseconds(store: Store):
    profile = await store.patch("kim", add=["x"])
    stored = await store.get("kim")
    assert stored is not None
    assert stored.updated_at == profile.updated_at and stored.updated_at.utcoffset() == timedelta(0)
    assert stored.preferences[0].created_at == profile.preferences[0].created_at


async def test_sqlite_connections_use_wal_full_sync_and_a_busy_timeout(tmp_path):
    store = SqliteStore(tmp_path / "p.db", busy_timeout=2.5)
    async with store:
        pragmas = await store._pool.write(
            lambda db: [
                db.execute(f"PRAGMA {name}").fetchone()[0] for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
            ],
            transaction=False,
        )
        reader = await store._pool.read(lambda db: db.execute("PRAGMA synchronous").fetchone()[0])
    assert pragmas == ["wal", 2, 2500, 1]  # synchronous 2 = FULL
    assert reader == 2

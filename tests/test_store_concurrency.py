"""Concurrent writes lose nothing: one store, two stores on one database, two OS processes."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from proxy.preferences import PreferenceNotFound, Store, TooManyPreferences
from tests.store_fixtures import Stores, run_workers

CONCURRENT = 50


async def test_concurrent_patches_on_one_user_all_apply(store: Store):
    texts = [f"preference {i}" for i in range(CONCURRENT)]
    profiles = await asyncio.gather(*(store.patch("alice", add=[text]) for text in texts))
    stored = await store.get("alice")
    assert stored is not None
    assert sorted(stored.texts) == sorted(texts)
    assert len({p.id for p in stored.preferences}) == CONCURRENT
    assert sorted(len(p.preferences) for p in profiles) == list(range(1, CONCURRENT + 1))
    assert max(profiles, key=lambda p: len(p.preferences)) == stored


async def test_concurrent_adds_and_removes_on_one_user_all_apply(store: Store):
    seeded = await store.put("bob", [f"old {i}" for i in range(CONCURRENT // 2)])
    removals = [store.patch("bob", remove=[p.id]) for p in seeded.preferences]
    additions = [store.patch("bob", add=[f"new {i}"]) for i in range(CONCURRENT // 2)]
    both = [x for pair in zip(removals, additions, strict=True) for x in pair]
    await asyncio.gather(*both)
    assert sorted(await store.preference_texts("bob")) == sorted(f"new {i}" for i in range(CONCURRENT // 2))


async def test_a_limit_holds_under_concurrent_patches(store: Store):
    """The caller's maximum count, checked inside the write: 50 racing adds, exactly 32 land."""
    results = await asyncio.gather(*(store.patch("fay", add=[f"p{i}"], limit=32) for i in range(CONCURRENT)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == CONCURRENT - 32 and all(isinstance(r, TooManyPreferences) for r in refused)
    assert refused[0].status == 400 and refused[0].code == "too_many_preferences"
    assert len(await store.preference_texts("fay")) == 32
    profile = await store.get("fay")
    assert profile is not None
    assert len((await store.patch("fay", add=["swap"], remove=[profile.preferences[0].id], limit=32)).preferences) == 32
    assert len((await store.patch("fay", remove=[profile.preferences[1].id], limit=8)).preferences) == 31


async def test_concurrent_removals_of_one_id_succeed_once(store: Store):
    seeded = await store.put("carol", ["target", "other"])
    target = seeded.preferences[0].id
    results = await asyncio.gather(*(store.patch("carol", remove=[target]) for _ in range(10)), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, PreferenceNotFound) for r in results if isinstance(r, BaseException))
    assert await store.preference_texts("carol") == ("other",)


async def test_concurrent_patches_on_many_users_and_reads_in_between(store: Store):
    users = [f"user-{i}" for i in range(10)]
    writes = [store.patch(user, add=[f"{user}/{n}"]) for n in range(5) for user in users]
    reads = [store.preference_texts(user) for user in users]
    await asyncio.gather(*writes, *reads)
    for user in users:
        assert sorted(await store.preference_texts(user)) == [f"{user}/{n}" for n in range(5)]


async def test_two_stores_on_one_database_lose_no_patch(shared_stores: Stores):
    """Two store instances, as `serve --workers 2` or two replicas would have."""
    first, second = await shared_stores.open(), await shared_stores.open()
    half = CONCURRENT // 2
    await asyncio.gather(
        *(first.patch("dana", add=[f"first {i}"]) for i in range(half)),
        *(second.patch("dana", add=[f"second {i}"]) for i in range(half)),
    )
    expected = sorted([f"first {i}" for i in range(half)] + [f"second {i}" for i in range(half)])
    assert sorted(await first.preference_texts("dana")) == expected
    assert await second.get("dana") == await first.get("dana")
    stored = await first.get("dana")
    assert stored is not None
    ids = [p.id for p in stored.preferences[::2]]
    await asyncio.gather(
        *(first.patch("dana", remove=[i]) for i in ids[::2]),
        *(second.patch("dana", remove=[i], add=["late"]) for i in ids[1::2]),
    )
    left = await second.preference_texts("dana")
    assert len(left) == CONCURRENT - len(ids) + len(ids[1::2]) and left.count("late") == len(ids[1::2])


async def test_stores_opening_together_on_a_new_database_all_work(shared_stores: Stores):
    opened = await asyncio.gather(*(shared_stores.open() for _ in range(4)))
    await asyncio.gather(*(s.patch("erin", add=[f"from store {i}"]) for i, s in enumerate(opened)))
    assert len(await opened[0].preference_texts("erin")) == 4


@pytest.mark.timeout(180)
async def test_two_processes_hammering_one_database_lose_nothing(shared_stores: Stores):
    """Two real OS processes open the same fresh database at the same moment (migrations race)
    and patch the same user concurrently; every patch is there afterwards."""
    count = 100
    user = f"shared-{secrets.token_hex(3)}"
    base = {**shared_stores.settings(), "user": user, "count": count, "concurrency": 8}
    outputs = await run_workers([{**base, "prefix": "p1"}, {**base, "prefix": "p2"}])
    assert [out.splitlines()[-1] for out in outputs] == ["done", "done"]
    store = await shared_stores.open()
    texts = await store.preference_texts(user)
    assert sorted(texts) == sorted(f"p{n}-{i}" for n in (1, 2) for i in range(count))

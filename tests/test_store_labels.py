"""Operators' labels on judged samples, and samples counted over time, on every store backend."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from proxy.preferences import SampleNotFound, Store
from proxy.preferences.models import utcnow
from tests.store_fixtures import Stores
from tests.test_store_samples import sample


async def test_a_label_is_stored_beside_its_sample(store: Store):
    first, second = sample(user_id="alice"), sample(seconds_ago=5, user_id="bob")
    await store.add_sample(first)
    await store.add_sample(second)
    label = await store.add_label(first.id, 2, "contradicts")
    again = await store.add_label(first.id, 4, "consistent")
    assert (label.sample_id, label.follow_score, label.consistency) == (first.id, 2, "contradicts")
    assert label.id.startswith("lbl_") and label.id != again.id
    found = await store.get_sample(first.id)
    assert found is not None and found.labels == (label, again)
    assert found.model_copy(update={"labels": ()}) == first
    page, _ = await store.list_samples()
    assert [s.labels for s in page] == [(label, again), ()]
    assert await store.get_sample(second.id) == second
    assert await store.get_sample("smp_missing") is None


async def test_a_label_on_a_missing_sample_is_refused(store: Store):
    with pytest.raises(SampleNotFound) as raised:
        await store.add_label("smp_0000", 3, "consistent")
    assert raised.value.status == 404 and raised.value.param == "sample_id"
    assert await store.labelled_samples() == []


async def test_labels_go_with_the_users_samples(store: Store):
    mine, theirs = sample(user_id="carol"), sample(user_id="dave")
    for item in (mine, theirs):
        await store.add_sample(item)
        await store.add_label(item.id, 5, "consistent")
    await store.delete("carol")
    assert [s.id for s in await store.labelled_samples()] == [theirs.id]
    assert await store.get_sample(mine.id) is None


async def test_labels_go_with_pruned_samples(store: Store):
    old, new = sample(seconds_ago=60), sample()
    for item in (old, new):
        await store.add_sample(item)
        await store.add_label(item.id, 1, "cannot_compare")
    assert await store.prune_samples(1) == 1
    (kept,) = await store.labelled_samples()
    assert kept.id == new.id and len(kept.labels) == 1
    # A pruned sample's id cannot be labelled again.
    with pytest.raises(SampleNotFound):
        await store.add_label(old.id, 3, "consistent")


async def test_labelled_samples_lists_each_sample_once_with_all_its_labels(store: Store):
    items = [sample(seconds_ago=i) for i in range(3)]
    for item in items:
        await store.add_sample(item)
    await store.add_label(items[2].id, 1, "contradicts")
    await store.add_label(items[0].id, 2, "consistent")
    await store.add_label(items[2].id, 3, "consistent")
    found = await store.labelled_samples()
    assert [s.id for s in found] == [items[0].id, items[2].id]
    assert [label.follow_score for label in found[1].labels] == [1, 3]
    assert len(await store.labelled_samples(limit=1)) == 1


async def test_labels_survive_reopening(shared_stores: Stores):
    first = await shared_stores.open()
    item = sample()
    await first.add_sample(item)
    label = await first.add_label(item.id, 4, "consistent")
    await first.close()
    second = await shared_stores.open()
    found = await second.get_sample(item.id)
    assert found is not None and found.labels == (label,)


async def test_series_counts_samples_in_their_buckets(store: Store):
    # A 10-minute window in 10 buckets of a minute, aligned to whole minutes since the epoch.
    added = [
        sample(seconds_ago=30, broken=True, verdict="contradicts", robust=False),
        sample(seconds_ago=90),
        sample(seconds_ago=95, role="shadow", strategy="naive", followed=False, robust=False),
        sample(seconds_ago=500, verdict="cannot_compare", broken=None, robust=None),
        sample(seconds_ago=700),
    ]
    for item in added:
        await store.add_sample(item)
    before = utcnow()
    series = await store.sample_series(600, 10)
    assert series.buckets == 10 and series.bucket_seconds == 60.0
    assert series.since.second == 0 and series.since.microsecond == 0
    assert before - timedelta(seconds=600) < series.since <= before - timedelta(seconds=540)
    expected: dict[tuple[int, str, str], list[Any]] = {}
    for item in added:
        if item.created_at >= series.since:
            index = (item.created_at - series.since) // timedelta(seconds=60)
            expected.setdefault((index, item.strategy, item.role), []).append(item)
    seen = {(round((p.start - series.since).total_seconds() / 60), p.counts.strategy, p.counts.role): p.counts for p in series.points}
    assert set(seen) == set(expected) and sum(p.counts.samples for p in series.points) == 4
    for key, items in expected.items():
        counts = seen[key]
        assert counts.samples == len(items)
        assert counts.broken == sum(i.broken is True for i in items) and counts.not_followed == sum(i.followed is False for i in items)
        assert counts.uncomparable == sum(i.verdict == "cannot_compare" for i in items)
    again = await store.sample_series(600, 10)
    assert again.since == series.since or again.since == series.since + timedelta(seconds=60)  # buckets stay put


async def test_series_buckets_round_up_to_a_microsecond(store: Store):
    series = await store.sample_series(1.0, 3)
    assert series.bucket_seconds == pytest.approx(0.333334) and series.points == ()
    assert (await store.sample_series(1e-9, 200)).bucket_seconds == 0.000001  # never narrower than a microsecond
    with pytest.raises(ValueError):
        await store.sample_series(0, 3)

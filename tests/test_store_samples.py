"""The monitor's judged samples in the store: listing, filters, cursor, summary, retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from proxy.preferences import InvalidCursor, JudgedSample, SampleCounts, SampleTexts, Store, UnstorableText
from proxy.preferences.models import utcnow
from proxy.preferences.store import PRUNE_EVERY
from tests.store_fixtures import Stores


def sample(seconds_ago: float = 0.0, **fields: Any) -> JudgedSample:
    values: dict[str, Any] = {
        "created_at": utcnow() - timedelta(seconds=seconds_ago),
        "request_id": "req",
        "model": "smollm2",
        "strategy": "pref_aligner",
        "role": "served",
        "relevance": "relevant",
        "verdict": "consistent",
        "broken": False,
        "followed": True,
        "robust": True,
        "follow_score": 4,
    }
    return JudgedSample(**{**values, **fields})


async def test_a_sample_comes_back_exactly(store: Store):
    full = sample(
        user_id="alice",
        reasons={"consistency": "Same final answer: B.", "follow": "Uses metric units as asked ✓"},
        texts=SampleTexts(query="How far? 🚗", preferences=("metric", "brief"), reference="5 miles", answer="8 km"),
    )
    bare = sample(seconds_ago=1, verdict=None, broken=None, followed=None, robust=None, follow_score=None)
    await store.add_sample(full)
    await store.add_sample(bare)
    assert await store.list_samples() == ([full, bare], False)
    assert bare.texts is None and bare.reasons == {}


async def test_samples_are_listed_newest_first_and_paged(store: Store):
    added = [sample(seconds_ago=100 - i, request_id=f"req-{i}") for i in range(7)]
    for item in reversed(added):
        await store.add_sample(item)
    newest_first = list(reversed(added))
    seen, after, pages = [], None, 0
    while pages < 10:
        page, has_more = await store.list_samples(limit=3, after=after)
        pages += 1
        seen += page
        if not has_more:
            break
        after = page[-1].id
    assert pages == 3 and seen == newest_first
    with pytest.raises(InvalidCursor) as raised:
        await store.list_samples(after="smp_doesnotexist")
    assert raised.value.status == 400 and raised.value.param == "after"


async def test_samples_created_in_the_same_microsecond_page_without_loss(store: Store):
    moment = utcnow()
    added = [sample(created_at=moment, request_id=f"req-{i}") for i in range(5)]
    for item in added:
        await store.add_sample(item)
    first, more = await store.list_samples(limit=2)
    second, more2 = await store.list_samples(limit=2, after=first[-1].id)
    third, more3 = await store.list_samples(limit=2, after=second[-1].id)
    assert (more, more2, more3) == (True, True, False)
    assert sorted(s.id for s in first + second + third) == sorted(s.id for s in added)


async def test_samples_filter_by_verdict_strategy_and_role(store: Store):
    broken = sample(seconds_ago=3, verdict="contradicts", broken=True, robust=False)
    shadow = sample(seconds_ago=2, strategy="naive", role="shadow")
    unclear = sample(seconds_ago=1, verdict="cannot_compare", broken=None, robust=None)
    for item in (broken, shadow, unclear):
        await store.add_sample(item)
    assert (await store.list_samples(verdict="contradicts"))[0] == [broken]
    assert (await store.list_samples(verdict="consistent"))[0] == [shadow]
    assert (await store.list_samples(strategy="naive"))[0] == [shadow]
    assert (await store.list_samples(role="served"))[0] == [unclear, broken]
    assert (await store.list_samples(role="served", verdict="cannot_compare"))[0] == [unclear]
    assert (await store.list_samples(role="shadow", strategy="pref_aligner"))[0] == []
    page, has_more = await store.list_samples(role="served", limit=1)
    assert (page, has_more) == ([unclear], True)
    assert (await store.list_samples(role="served", limit=1, after=unclear.id)) == ([broken], False)


async def test_summary_counts_per_strategy_and_role_within_the_window(store: Store):
    for item in (
        sample(),
        sample(verdict="contradicts", broken=True, robust=False),
        sample(followed=False, robust=False, follow_score=2),
        # not followed, but cannot_compare: out of every rate, so not counted as not followed either
        sample(verdict="cannot_compare", broken=None, followed=False, robust=None, follow_score=1),
        sample(verdict=None, broken=None, followed=None, robust=None, follow_score=None),
        # relevant and comparable, the follow verdict missing: not followed (the paper's rule), and missing
        sample(followed=None, robust=False, follow_score=None),
        # irrelevant: no follow verdict to miss
        sample(relevance="irrelevant", followed=None, follow_score=None),
        sample(strategy="naive", role="shadow", verdict="contradicts", broken=True, followed=False, robust=False),
        sample(seconds_ago=7200, verdict="contradicts", broken=True, robust=False),
    ):
        await store.add_sample(item)
    summary = await store.sample_summary(3600)
    assert summary.window_seconds == 3600
    assert utcnow() - timedelta(seconds=3601) < summary.since < utcnow() - timedelta(seconds=3599)
    assert summary.groups == (
        SampleCounts(strategy="naive", role="shadow", samples=1, judged=1, broken=1, not_followed=1, not_robust=1),
        SampleCounts(
            strategy="pref_aligner",
            role="served",
            samples=7,
            judged=6,
            broken=1,
            not_followed=2,
            not_robust=3,
            uncomparable=1,
            judge_failed=1,
            follow_missing=2,
        ),
    )
    assert (await store.sample_summary(10_000)).groups[1].samples == 8
    with pytest.raises(ValueError):
        await store.sample_summary(0)


async def test_prune_keeps_the_newest(store: Store):
    added = [sample(seconds_ago=100 - i, request_id=f"req-{i}") for i in range(10)]
    for item in added:
        await store.add_sample(item)
    assert await store.prune_samples(4) == 6
    assert (await store.list_samples(limit=100))[0] == list(reversed(added[6:]))
    assert await store.prune_samples(4) == 0
    assert await store.prune_samples(0) == 4
    assert await store.list_samples() == ([], False)


async def test_add_sample_with_keep_prunes_as_it_goes(store: Store):
    keep = 5
    for i in range(PRUNE_EVERY + 3):
        await store.add_sample(sample(seconds_ago=1000 - i, request_id=f"req-{i}"), keep=keep)
    remaining, _ = await store.list_samples(limit=1000)
    assert len(remaining) == keep + 2  # pruned on add 1 and add PRUNE_EVERY + 1, then two more
    assert remaining[0].request_id == f"req-{PRUNE_EVERY + 2}"


async def test_deleting_a_profile_deletes_that_users_samples(store: Store):
    await store.put("alice", ["x"])
    mine = [sample(seconds_ago=i, user_id="alice") for i in range(3)]
    others = [sample(seconds_ago=10, user_id="bob"), sample(seconds_ago=11)]
    for item in mine + others:
        await store.add_sample(item)
    assert await store.delete("alice") is True
    assert (await store.list_samples())[0] == others
    await store.add_sample(sample(user_id="carol"))
    assert await store.delete("carol") is False  # no profile, but the samples go all the same
    assert (await store.list_samples())[0] == others


async def test_unstorable_sample_text_is_refused(store: Store):
    with pytest.raises(UnstorableText):
        await store.add_sample(sample(texts=SampleTexts(query="a\x00b")))
    with pytest.raises(UnstorableText):
        await store.add_sample(sample(reasons={"follow": "bad \ud800"}))
    assert await store.list_samples() == ([], False)


async def test_samples_survive_reopening(shared_stores: Stores):
    first = await shared_stores.open()
    kept = sample(user_id="alice", texts=SampleTexts(query="q", answer="a"))
    await first.add_sample(kept)
    await first.close()
    second = await shared_stores.open()
    assert await second.list_samples() == ([kept], False)


async def test_one_verdict_per_request_role_and_judge_fingerprint(store: Store):
    """A job delivered twice (its worker died after storing, before acknowledging) is stored once;
    another fingerprint (a re-judge) or another role is a sample of its own."""
    first = sample(request_id="r1", fingerprint="fp-a", judges={"consistency": "c1", "follow": "f1", "relevance": "r1"})
    assert await store.add_sample(first) is True
    assert await store.add_sample(sample(request_id="r1", fingerprint="fp-a", verdict="contradicts")) is False
    assert await store.add_sample(sample(request_id="r1", fingerprint="fp-b")) is True
    assert await store.add_sample(sample(request_id="r1", role="shadow", fingerprint="fp-a")) is True
    assert await store.verdict_exists("r1", "served", "fp-a") and not await store.verdict_exists("r1", "served", "fp-c")
    samples, _ = await store.list_samples()
    assert len(samples) == 3
    assert next(s for s in samples if s.id == first.id) == first  # judges and fingerprint come back exactly
    # samples stored before fingerprints (NULL) never conflict with each other
    assert await store.add_sample(sample(request_id="old")) and await store.add_sample(sample(request_id="old"))


async def test_the_summary_separates_judge_fingerprints(store: Store):
    await store.add_sample(sample(request_id="r1", fingerprint="old"))
    await store.add_sample(sample(request_id="r1", fingerprint="new", verdict="contradicts", broken=True, robust=False))
    summary = await store.sample_summary(3600)
    by_fingerprint = {group.fingerprint: group for group in summary.groups}
    assert set(by_fingerprint) == {"old", "new"}
    assert (by_fingerprint["old"].broken, by_fingerprint["new"].broken) == (0, 1)
    series = await store.sample_series(3600, 4)
    assert {point.counts.fingerprint for point in series.points} == {"old", "new"}


async def test_migration_4_keeps_the_samples_and_labels_of_an_older_schema(tmp_path):
    """A database at schema 3 (before fingerprints) opens with its samples and labels intact."""
    import sqlite3
    from contextlib import closing

    from proxy.preferences.sqlite import MIGRATIONS, SqliteStore

    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as raw:
        raw.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
        for version, statements in MIGRATIONS[:3]:
            for statement in statements:
                raw.execute(statement)
            raw.execute("INSERT INTO schema_version VALUES (?, 0)", (version,))
        raw.execute(
            "INSERT INTO samples (id, created_at, request_id, user_id, model, strategy, role, relevance, verdict, broken,"
            " followed, robust, follow_score, reasons, texts) VALUES"
            " ('smp_old', 1700000000000000, 'req-old', NULL, 'm', 'naive', 'served', 'relevant', 'consistent', 0, 1, 1, 4, '{}', NULL)"
        )
        raw.execute("INSERT INTO sample_labels VALUES ('lbl_old', 'smp_old', 1700000000000001, 2, 'contradicts')")
        raw.commit()
    store = SqliteStore(path)
    await store.open()
    try:
        [old] = await store.labelled_samples()
        assert (old.id, old.request_id, old.fingerprint, old.judges) == ("smp_old", "req-old", None, {})
        assert [(label.follow_score, label.consistency) for label in old.labels] == [(2, "contradicts")]
        assert await store.add_sample(sample(request_id="req-old", fingerprint="fp")) is True
    finally:
        await store.close()

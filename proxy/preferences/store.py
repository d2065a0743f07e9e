"""`Store`: the one async interface to profiles and judged samples, and `open_store(settings)`.

Three backends implement it: `memory` (tests, throwaway runs), `sqlite` (the embedded default,
one machine, any number of processes) and `postgres` (replicas). The public methods here check
their arguments once for every backend; a backend implements the underscored primitives, each one
statement or one transaction. The store enforces no business limits (how many preferences, how
long): the caller validates those. It refuses only text no backend can keep exactly.

Semantics every backend shares:

* `put` replaces the list. A text equal to one already stored keeps that preference's id and
  timestamps (so the same PUT twice is a no-op for ids); every other text gets a new id. Ids are
  never re-pointed at a different text, so an id a client holds always removes what it named.
* `patch` removes, then appends, atomically: an unknown id raises `PreferenceNotFound` and
  changes nothing. It creates a missing profile. Concurrent patches on one user all apply.
  Its optional `limit` (the caller's maximum count) is checked inside the transaction, the one
  business rule the caller cannot check correctly from outside under concurrent patches.
* `delete` removes the profile and every judged sample of that user (even with no profile).
* A sample's labels (`add_label`) are deleted with it: by `delete`, and by pruning.
* Lists are keyset-paginated: profiles by `user_id`, samples newest first; `after` is the last
  id of the previous page. A page is `(items, has_more)`.
* A method that returned has committed: SQLite with `synchronous=FULL`, PostgreSQL by COMMIT.
* Any failure of the database itself is `StoreUnavailable` (503) or `StoreError` (500).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

from ..config import ProfileSettings
from .models import (
    JudgedSample,
    Preference,
    Profile,
    SampleBucket,
    SampleCounts,
    SampleLabel,
    SampleSeries,
    SampleSummary,
    Verdict,
    check_storable,
    new_preference_id,
    utcnow,
)
from .store_errors import PreferenceNotFound, SampleNotFound, TooManyPreferences, UnstorableText

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PRUNE_EVERY = 64
"""With `add_sample(..., keep=N)`, a store prunes on its 1st add and then every 64th."""

ProfileEdit = Callable[[list[Preference], datetime], list[Preference]]
"""Given a user's current preferences (in order) and the time of the write, the list to store
instead; may raise, and then nothing is written."""


class Store(ABC):
    """Profiles and judged samples in one database. Open with `await store.open()` (creates and
    migrates the schema) or `async with store:`; close with `await store.close()`."""

    def __init__(self) -> None:
        self._sample_adds = 0

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @abstractmethod
    async def open(self) -> None:
        """Connect, create the schema and run pending migrations (safe with several processes)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and threads; idempotent."""

    @abstractmethod
    async def ping(self) -> None:
        """Return when the database answers a query; raise `StoreUnavailable` otherwise."""

    async def get(self, user_id: str) -> Profile | None:
        """The user's profile, or None when there is none."""
        return await self._get(user_id) if storable(user_id) else None

    async def preference_texts(self, user_id: str) -> tuple[str, ...]:
        """The user's preference texts in order; () when none. The request path's one query."""
        return await self._preference_texts(user_id) if storable(user_id) else ()

    async def delete(self, user_id: str) -> bool:
        """Delete the profile and the user's samples; True when a profile existed."""
        return await self._delete(user_id) if storable(user_id) else False

    async def put(self, user_id: str, texts: Sequence[str]) -> Profile:
        """Replace the user's preferences with `texts` (see the module docstring for ids)."""
        check_storable(user_id, "user_id")
        texts = [check_storable(text, "preferences") for text in texts]
        return await self._update(user_id, lambda existing, now: plan_put(existing, texts, now))

    async def patch(self, user_id: str, add: Sequence[str] = (), remove: Sequence[str] = (), *, limit: int | None = None) -> Profile:
        """Remove the preferences with ids `remove`, append `add`; atomic; creates the profile.
        With `limit`, growing the list past `limit` preferences raises `TooManyPreferences`."""
        check_storable(user_id, "user_id")
        add = [check_storable(text, "add") for text in add]
        remove = list(remove)
        return await self._update(user_id, lambda existing, now: plan_patch(user_id, existing, add, remove, now, limit))

    async def list_profiles(self, limit: int, after: str | None = None) -> tuple[list[Profile], bool]:
        """Up to `limit` profiles with user_id > `after`, by user_id, and whether more follow."""
        _check_limit(limit)
        if after is not None:
            check_storable(after, "after")
        profiles = await self._list_profiles(limit + 1, after)
        return profiles[:limit], len(profiles) > limit

    async def add_sample(self, sample: JudgedSample, *, keep: int | None = None) -> bool:
        """Store a judged sample; False (and nothing stored) when a sample with the same
        (request id, role, judge fingerprint) is stored already, so a job judged twice (a
        re-delivery) counts once. With `keep`, also prune to the newest `keep` samples on the
        first add and every `PRUNE_EVERY` adds after it, so the table stays near `keep`."""
        sample.check_storable()
        stored = await self._insert_sample(sample)
        self._sample_adds += 1
        if keep is not None and self._sample_adds % PRUNE_EVERY == 1:
            await self.prune_samples(keep)
        return stored

    async def verdict_exists(self, request_id: str, role: str, fingerprint: str) -> bool:
        """Whether a sample of this request and role judged by judges of `fingerprint` is stored."""
        if not all(storable(value) for value in (request_id, role, fingerprint)):
            return False
        return await self._verdict_exists(request_id, role, fingerprint)

    async def list_samples(
        self,
        *,
        verdict: Verdict | None = None,
        strategy: str | None = None,
        role: str | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> tuple[list[JudgedSample], bool]:
        """Samples newest first (created_at, then id), filtered; `after` is a sample id
        (`InvalidCursor` when it does not exist)."""
        _check_limit(limit)
        for param, value in (("after", after), ("strategy", strategy), ("role", role), ("verdict", verdict)):
            if value is not None:
                check_storable(value, param)
        samples = await self._list_samples(verdict, strategy, role, limit + 1, after)
        return await self._with_labels(samples[:limit]), len(samples) > limit

    async def get_sample(self, sample_id: str) -> JudgedSample | None:
        """The sample with its labels, or None."""
        if not storable(sample_id):
            return None
        found = await self._with_labels(await self._samples_by_id([sample_id]))
        return found[0] if found else None

    async def add_label(self, sample_id: str, follow_score: int, consistency: Verdict) -> SampleLabel:
        """Record an operator's label on a sample (`SampleNotFound` when there is no such sample)."""
        check_storable(sample_id, "sample_id")
        label = SampleLabel(sample_id=sample_id, follow_score=follow_score, consistency=consistency)
        if not await self._insert_label(label):
            raise SampleNotFound(sample_id)
        return label

    async def labelled_samples(self, limit: int = 10000) -> list[JudgedSample]:
        """The samples of the newest `limit` labels, newest first, each with all its labels."""
        _check_limit(limit)
        ids = list(dict.fromkeys(label.sample_id for label in await self._list_labels(limit)))
        return await self._with_labels(await self._samples_by_id(ids))

    async def labelled_verdicts(self, limit: int = 10000) -> list[JudgedSample]:
        """Every sample of the requests behind the newest `limit` labels, re-judged ones included,
        each carrying the labels recorded on any sample of its (request, role): a label says what
        the verdicts on those texts should be, whichever judge made them."""
        labelled = await self.labelled_samples(limit)
        by_key: dict[tuple[str, str], list[SampleLabel]] = {}
        for sample in labelled:
            by_key.setdefault((sample.request_id, sample.role), []).extend(sample.labels)
        related = await self._samples_by_request(list(dict.fromkeys(sample.request_id for sample in labelled)))
        return [
            sample.model_copy(update={"labels": tuple(by_key[(sample.request_id, sample.role)])})
            for sample in related
            if (sample.request_id, sample.role) in by_key
        ]

    async def _with_labels(self, samples: list[JudgedSample]) -> list[JudgedSample]:
        if not samples:
            return samples
        grouped: dict[str, list[SampleLabel]] = {}
        for label in await self._labels_of([sample.id for sample in samples]):
            grouped.setdefault(label.sample_id, []).append(label)
        return [sample.model_copy(update={"labels": tuple(grouped.get(sample.id, ()))}) for sample in samples]

    async def sample_summary(self, window_seconds: float) -> SampleSummary:
        """Counts per (strategy, role, judge fingerprint) of the samples created in the last `window_seconds`."""
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        since = utcnow() - timedelta(seconds=window_seconds)
        groups = await self._sample_counts(since)
        groups.sort(key=lambda group: (group.strategy, group.role, group.fingerprint or ""))
        return SampleSummary(since=since, window_seconds=window_seconds, groups=tuple(groups))

    async def sample_series(self, window_seconds: float, buckets: int) -> SampleSeries:
        """Counts per (strategy, role) in `buckets` equal buckets ending now. A bucket is the window
        over `buckets`, rounded up to a microsecond; buckets start at multiples of that width since
        the epoch (so they stay put from one call to the next), the last being the current one."""
        if window_seconds <= 0 or buckets < 1:
            raise ValueError("window_seconds must be positive and buckets at least 1")
        until = utcnow()
        width = max(1, -(-round(window_seconds * 1_000_000) // buckets))  # microseconds, rounded up
        current = (until - EPOCH) // timedelta(microseconds=1) // width * width
        since = EPOCH + timedelta(microseconds=current - width * (buckets - 1))
        rows = await self._sample_buckets(since, until, width)
        points = [SampleBucket(start=since + timedelta(microseconds=width * index), counts=counts) for index, counts in rows]
        points.sort(key=lambda point: (point.start, point.counts.strategy, point.counts.role, point.counts.fingerprint or ""))
        return SampleSeries(since=since, bucket_seconds=width / 1_000_000, buckets=buckets, points=tuple(points))

    async def prune_samples(self, keep: int) -> int:
        """Delete all but the newest `keep` samples; the number deleted."""
        if keep < 0:
            raise ValueError("keep must be >= 0")
        return await self._prune_samples(keep)

    @abstractmethod
    async def _get(self, user_id: str) -> Profile | None: ...

    @abstractmethod
    async def _preference_texts(self, user_id: str) -> tuple[str, ...]: ...

    @abstractmethod
    async def _delete(self, user_id: str) -> bool: ...

    @abstractmethod
    async def _update(self, user_id: str, plan: ProfileEdit) -> Profile:
        """In one write transaction that excludes every other write to this user: read the
        preferences, take `now`, store `plan(them, now)` (nothing when it raises), set the
        profile's `updated_at` to `now`, return the stored profile."""

    @abstractmethod
    async def _list_profiles(self, limit: int, after: str | None) -> list[Profile]: ...

    @abstractmethod
    async def _insert_sample(self, sample: JudgedSample) -> bool:
        """Insert unless (request_id, role, fingerprint) is stored (a NULL fingerprint never
        conflicts); whether it was inserted."""

    @abstractmethod
    async def _verdict_exists(self, request_id: str, role: str, fingerprint: str) -> bool: ...

    @abstractmethod
    async def _list_samples(
        self, verdict: str | None, strategy: str | None, role: str | None, limit: int, after: str | None
    ) -> list[JudgedSample]: ...

    @abstractmethod
    async def _sample_counts(self, since: datetime) -> list[SampleCounts]: ...

    @abstractmethod
    async def _prune_samples(self, keep: int) -> int: ...

    @abstractmethod
    async def _samples_by_id(self, ids: Sequence[str]) -> list[JudgedSample]:
        """The samples with these ids that exist, newest first."""

    @abstractmethod
    async def _samples_by_request(self, request_ids: Sequence[str]) -> list[JudgedSample]:
        """The samples of these request ids, newest first."""

    @abstractmethod
    async def _insert_label(self, label: SampleLabel) -> bool:
        """Store the label if its sample exists, in one statement; whether it was stored."""

    @abstractmethod
    async def _labels_of(self, sample_ids: Sequence[str]) -> list[SampleLabel]:
        """The labels of these samples, oldest first."""

    @abstractmethod
    async def _list_labels(self, limit: int) -> list[SampleLabel]:
        """The newest `limit` labels, newest first."""

    @abstractmethod
    async def _sample_buckets(self, since: datetime, until: datetime, width_micros: int) -> list[tuple[int, SampleCounts]]:
        """(bucket index, counts) per bucket and (strategy, role) of the samples created in
        [since, until); index = (created_at - since) // width_micros."""


def plan_put(existing: Sequence[Preference], texts: Sequence[str], now: datetime) -> list[Preference]:
    """`texts` as preferences: each reuses the first unused existing preference with that text."""
    unused: dict[str, list[Preference]] = {}
    for preference in existing:
        unused.setdefault(preference.text, []).append(preference)
    result = []
    for text in texts:
        same = unused.get(text)
        result.append(same.pop(0) if same else _new(text, now))
    return result


def plan_patch(
    user_id: str,
    existing: Sequence[Preference],
    add: Sequence[str],
    remove: Sequence[str],
    now: datetime,
    limit: int | None = None,
) -> list[Preference]:
    """`existing` without the ids in `remove`, then `add` appended; `PreferenceNotFound` or
    `TooManyPreferences` instead when it cannot be done."""
    known = {preference.id for preference in existing}
    for preference_id in remove:
        if preference_id not in known:
            raise PreferenceNotFound(user_id, preference_id)
    gone = set(remove)
    result = [preference for preference in existing if preference.id not in gone] + [_new(text, now) for text in add]
    if limit is not None and len(result) > max(limit, len(existing)):  # shrinking is always allowed
        raise TooManyPreferences(user_id, len(result), limit)
    return result


def storable(user_id: str) -> bool:
    """Whether a user id can exist in the store; reads of one that cannot answer "nobody"."""
    try:
        check_storable(user_id, "user_id")
    except UnstorableText:
        return False
    return True


def _new(text: str, now: datetime) -> Preference:
    return Preference(id=new_preference_id(), text=text, created_at=now, updated_at=now)


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError("limit must be >= 1")


def open_store(settings: ProfileSettings) -> Store:
    """The configured backend, not yet opened: `await store.open()` or `async with store:`.
    asyncpg is imported only when the backend is postgres."""
    if settings.backend == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    if settings.backend == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(settings.path, busy_timeout=settings.busy_timeout_seconds)
    from .postgres import PostgresStore

    assert settings.dsn is not None  # ProfileSettings requires it for postgres
    return PostgresStore(
        settings.dsn,
        schema=settings.schema_name,
        connect_timeout=settings.connect_timeout_seconds,
        max_connections=settings.max_connections,
    )

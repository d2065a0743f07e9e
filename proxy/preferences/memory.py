"""`MemoryStore`: profiles and samples in dicts of this process; gone when it exits.

For tests and throwaway runs. Every method runs without awaiting in between, so each is atomic
on the event loop; share one instance per process, not across processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from .models import JudgedSample, Profile, SampleCounts, SampleLabel, utcnow
from .store import ProfileEdit, Store
from .store_errors import InvalidCursor


class MemoryStore(Store):
    """Owns three dicts: profiles by user id, samples by id, labels by sample id."""

    def __init__(self) -> None:
        super().__init__()
        self._profiles: dict[str, Profile] = {}
        self._samples: dict[str, JudgedSample] = {}
        self._labels: dict[str, list[SampleLabel]] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def _get(self, user_id: str) -> Profile | None:
        return self._profiles.get(user_id)

    async def _preference_texts(self, user_id: str) -> tuple[str, ...]:
        profile = self._profiles.get(user_id)
        return profile.texts if profile else ()

    async def _delete(self, user_id: str) -> bool:
        for sample in [s for s in self._samples.values() if s.user_id == user_id]:
            del self._samples[sample.id]
            self._labels.pop(sample.id, None)
        return self._profiles.pop(user_id, None) is not None

    async def _update(self, user_id: str, plan: ProfileEdit) -> Profile:
        current = self._profiles.get(user_id)
        now = utcnow()
        preferences = plan(list(current.preferences) if current else [], now)
        profile = Profile(user_id=user_id, preferences=tuple(preferences), updated_at=now)
        self._profiles[user_id] = profile
        return profile

    async def _list_profiles(self, limit: int, after: str | None) -> list[Profile]:
        users = sorted(user for user in self._profiles if after is None or user > after)
        return [self._profiles[user] for user in users[:limit]]

    async def _insert_sample(self, sample: JudgedSample) -> bool:
        if sample.fingerprint is not None and await self._verdict_exists(sample.request_id, sample.role, sample.fingerprint):
            return False
        self._samples[sample.id] = sample.model_copy(update={"labels": ()})
        return True

    async def _verdict_exists(self, request_id: str, role: str, fingerprint: str) -> bool:
        return any((s.request_id, s.role, s.fingerprint) == (request_id, role, fingerprint) for s in self._samples.values())

    async def _list_samples(
        self, verdict: str | None, strategy: str | None, role: str | None, limit: int, after: str | None
    ) -> list[JudgedSample]:
        ordered = self._newest_first()
        if after is not None:
            if after not in self._samples:
                raise InvalidCursor(after)
            cursor = self._samples[after]
            ordered = [s for s in ordered if (s.created_at, s.id) < (cursor.created_at, cursor.id)]
        wanted = [
            s
            for s in ordered
            if (verdict is None or s.verdict == verdict)
            and (strategy is None or s.strategy == strategy)
            and (role is None or s.role == role)
        ]
        return wanted[:limit]

    async def _sample_counts(self, since: datetime) -> list[SampleCounts]:
        return count_samples(s for s in self._samples.values() if s.created_at >= since)

    async def _prune_samples(self, keep: int) -> int:
        doomed = self._newest_first()[keep:]
        for sample in doomed:
            del self._samples[sample.id]
            self._labels.pop(sample.id, None)
        return len(doomed)

    async def _samples_by_id(self, ids: Sequence[str]) -> list[JudgedSample]:
        wanted = set(ids)
        return [sample for sample in self._newest_first() if sample.id in wanted]

    async def _samples_by_request(self, request_ids: Sequence[str]) -> list[JudgedSample]:
        wanted = set(request_ids)
        return [sample for sample in self._newest_first() if sample.request_id in wanted]

    async def _insert_label(self, label: SampleLabel) -> bool:
        if label.sample_id not in self._samples:
            return False
        self._labels.setdefault(label.sample_id, []).append(label)
        return True

    async def _labels_of(self, sample_ids: Sequence[str]) -> list[SampleLabel]:
        found = [label for sample_id in dict.fromkeys(sample_ids) for label in self._labels.get(sample_id, ())]
        return sorted(found, key=lambda label: (label.created_at, label.id))

    async def _list_labels(self, limit: int) -> list[SampleLabel]:
        every = [label for labels in self._labels.values() for label in labels]
        return sorted(every, key=lambda label: (label.created_at, label.id), reverse=True)[:limit]

    async def _sample_buckets(self, since: datetime, until: datetime, width_micros: int) -> list[tuple[int, SampleCounts]]:
        by_bucket: dict[int, list[JudgedSample]] = {}
        for sample in self._samples.values():
            if since <= sample.created_at < until:
                index = (sample.created_at - since) // timedelta(microseconds=width_micros)
                by_bucket.setdefault(index, []).append(sample)
        return [(index, counts) for index, samples in by_bucket.items() for counts in count_samples(samples)]

    def _newest_first(self) -> list[JudgedSample]:
        return sorted(self._samples.values(), key=lambda s: (s.created_at, s.id), reverse=True)


def count_samples(samples: Iterable[JudgedSample]) -> list[SampleCounts]:
    """The per (strategy, role, fingerprint) counts of `samples`, as the SQL backends compute them."""
    totals: dict[tuple[str, str, str | None], dict[str, int]] = {}
    for sample in samples:
        row = totals.setdefault((sample.strategy, sample.role, sample.fingerprint), dict.fromkeys(COUNTED, 0))
        row["samples"] += 1
        row["judged"] += sample.verdict is not None
        row["broken"] += sample.broken is True
        row["not_followed"] += sample.relevance == "relevant" and sample.followed is not True and sample.broken is not None
        row["not_robust"] += sample.robust is False
        row["uncomparable"] += sample.verdict == "cannot_compare"
        row["judge_failed"] += sample.verdict is None
        row["follow_missing"] += sample.relevance == "relevant" and sample.followed is None
    return [SampleCounts(strategy=strategy, role=role, fingerprint=fp, **row) for (strategy, role, fp), row in totals.items()]


COUNTED = ("samples", "judged", "broken", "not_followed", "not_robust", "uncomparable", "judge_failed", "follow_missing")

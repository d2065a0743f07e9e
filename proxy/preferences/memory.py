"""`MemoryStore`: profiles and samples in dicts of this process; gone when it exits.

For tests and throwaway runs. Every method runs without awaiting in between, so each is atomic
on the event loop; share one instance per process, not across processes.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from .models import JudgedSample, Profile, SampleCounts, utcnow
from .store import ProfileEdit, Store
from .store_errors import InvalidCursor


class MemoryStore(Store):
    """Owns two dicts: profiles by user id, samples by id."""

    def __init__(self) -> None:
        super().__init__()
        self._profiles: dict[str, Profile] = {}
        self._samples: dict[str, JudgedSample] = {}

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

    async def _insert_sample(self, sample: JudgedSample) -> None:
        self._samples[sample.id] = sample

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
        return len(doomed)

    def _newest_first(self) -> list[JudgedSample]:
        return sorted(self._samples.values(), key=lambda s: (s.created_at, s.id), reverse=True)


def count_samples(samples: Iterable[JudgedSample]) -> list[SampleCounts]:
    """The per (strategy, role) counts of `samples`, as the SQL backends compute them."""
    totals: dict[tuple[str, str], dict[str, int]] = {}
    for sample in samples:
        row = totals.setdefault((sample.strategy, sample.role), dict.fromkeys(COUNTED, 0))
        row["samples"] += 1
        row["judged"] += sample.verdict is not None
        row["broken"] += sample.broken is True
        row["not_followed"] += sample.followed is False
        row["not_robust"] += sample.robust is False
        row["uncomparable"] += sample.verdict == "cannot_compare"
        row["judge_failed"] += sample.verdict is None
    return [SampleCounts(strategy=strategy, role=role, **row) for (strategy, role), row in totals.items()]


COUNTED = ("samples", "judged", "broken", "not_followed", "not_robust", "uncomparable", "judge_failed")

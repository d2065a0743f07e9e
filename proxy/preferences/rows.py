"""Rows to models for the SQL backends, and the SQL text both of them share.

Both backends select the same columns in the same order; they differ only in how a timestamp is
stored (SQLite: integer microseconds since the epoch; PostgreSQL: `timestamptz`), which the
caller passes as `decode_time`, and in placeholders (`?` / `$n`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson

from .models import JudgedSample, Preference, Profile, SampleCounts, SampleLabel, SampleTexts

DecodeTime = Callable[[Any], datetime]

PROFILE_COLUMNS = "p.user_id, p.updated_at, q.id, q.text, q.created_at, q.updated_at"
SAMPLE_COLUMNS = (
    "id, created_at, request_id, user_id, model, strategy, role, relevance, verdict, broken, followed, robust, follow_score, reasons, texts,"
    " fingerprint, judges"
)
SAMPLE_KEY = "request_id, role, fingerprint"  # one verdict per (request, role, judge fingerprint)
GROUP_COLUMNS = "strategy, role, fingerprint"
# As the monitor counts (perg_monitor_not_followed_total): not_followed is a relevant, comparable
# sample (broken decided) whose follow verdict is not "followed", a missing one included (the
# paper's rule), so it is a numerator over judged - uncomparable like broken and not_robust;
# follow_missing is every relevant sample without a follow verdict.
COUNT_COLUMNS = (
    "strategy, role, fingerprint, count(*),"
    " count(*) FILTER (WHERE verdict IS NOT NULL),"
    " count(*) FILTER (WHERE broken),"
    " count(*) FILTER (WHERE relevance = 'relevant' AND followed IS NOT TRUE AND broken IS NOT NULL),"
    " count(*) FILTER (WHERE NOT robust),"
    " count(*) FILTER (WHERE verdict = 'cannot_compare'),"
    " count(*) FILTER (WHERE verdict IS NULL),"
    " count(*) FILTER (WHERE relevance = 'relevant' AND followed IS NULL)"
)
LABEL_COLUMNS = "id, sample_id, created_at, follow_score, consistency"
COUNT_FIELDS = ("samples", "judged", "broken", "not_followed", "not_robust", "uncomparable", "judge_failed", "follow_missing")


def profiles_from_rows(rows: Iterable[Sequence[Any]], decode_time: DecodeTime) -> list[Profile]:
    """Profiles from rows of `PROFILE_COLUMNS` (a LEFT JOIN ordered by user, then position)."""
    grouped: dict[str, tuple[Any, list[Preference]]] = {}
    for user_id, updated_at, preference_id, text, created, changed in rows:
        _, preferences = grouped.setdefault(user_id, (updated_at, []))
        if preference_id is not None:
            preferences.append(Preference(id=preference_id, text=text, created_at=decode_time(created), updated_at=decode_time(changed)))
    return [
        Profile(user_id=user_id, preferences=tuple(preferences), updated_at=decode_time(updated_at))
        for user_id, (updated_at, preferences) in grouped.items()
    ]


def sample_values(sample: JudgedSample, encode_time: Callable[[datetime], Any]) -> tuple[Any, ...]:
    """The values of `SAMPLE_COLUMNS` for `sample`; `reasons` and `texts` as JSON text."""
    texts = orjson.dumps(sample.texts.model_dump()).decode() if sample.texts is not None else None
    return (
        sample.id,
        encode_time(sample.created_at),
        sample.request_id,
        sample.user_id,
        sample.model,
        sample.strategy,
        sample.role,
        sample.relevance,
        sample.verdict,
        sample.broken,
        sample.followed,
        sample.robust,
        sample.follow_score,
        orjson.dumps(sample.reasons).decode(),
        texts,
        sample.fingerprint,
        orjson.dumps(sample.judges).decode() if sample.judges else None,
    )


def sample_from_row(row: Sequence[Any], decode_time: DecodeTime) -> JudgedSample:
    (id_, created, request_id, user_id, model, strategy, role, relevance, verdict) = row[:9]
    broken, followed, robust, follow_score, reasons, texts, fingerprint, judges = row[9:]
    return JudgedSample(
        id=id_,
        created_at=decode_time(created),
        request_id=request_id,
        user_id=user_id,
        model=model,
        strategy=strategy,
        role=role,
        relevance=relevance,
        verdict=verdict,
        broken=_bool(broken),
        followed=_bool(followed),
        robust=_bool(robust),
        follow_score=follow_score,
        reasons=orjson.loads(reasons),
        texts=SampleTexts.model_validate(orjson.loads(texts)) if texts is not None else None,
        fingerprint=fingerprint,
        judges=orjson.loads(judges) if judges else {},
    )


def counts_from_rows(rows: Iterable[Sequence[Any]]) -> list[SampleCounts]:
    """`SampleCounts` from rows of `COUNT_COLUMNS`."""
    return [SampleCounts(strategy=row[0], role=row[1], fingerprint=row[2], **dict(zip(COUNT_FIELDS, row[3:], strict=True))) for row in rows]


def label_from_row(row: Sequence[Any], decode_time: DecodeTime) -> SampleLabel:
    id_, sample_id, created, follow_score, consistency = row
    return SampleLabel(id=id_, sample_id=sample_id, created_at=decode_time(created), follow_score=follow_score, consistency=consistency)


def buckets_from_rows(rows: Sequence[Sequence[Any]]) -> list[tuple[int, SampleCounts]]:
    """(bucket, counts) from rows of a bucket index followed by `COUNT_COLUMNS`."""
    counts = counts_from_rows([row[1:] for row in rows])
    return [(int(row[0]), found) for row, found in zip(rows, counts, strict=True)]


def sample_filters(verdict: str | None, strategy: str | None, role: str | None) -> list[tuple[str, str]]:
    """(column, value) for each filter given; column names are fixed here, never from input."""
    wanted = (("verdict", verdict), ("strategy", strategy), ("role", role))
    return [(column, value) for column, value in wanted if value is not None]


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)

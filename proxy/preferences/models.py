"""What the store keeps: profiles of ordered preferences, and the monitor's judged samples.

Frozen pydantic models, timestamps timezone-aware UTC with microsecond precision (what both SQLite,
as integer microseconds, and PostgreSQL, as `timestamptz`, keep exactly).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from ..config import Strategy
from .store_errors import UnstorableText

Role = Literal["served", "shadow"]
Relevance = Literal["relevant", "irrelevant", "unknown"]
Verdict = Literal["consistent", "contradicts", "cannot_compare"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_preference_id() -> str:
    """`pref_` + 16 hex digits: short, URL-safe, random (64 bits)."""
    return f"pref_{secrets.token_hex(8)}"


def new_sample_id() -> str:
    return f"smp_{secrets.token_hex(8)}"


def new_label_id() -> str:
    return f"lbl_{secrets.token_hex(8)}"


def check_storable(text: str, param: str) -> str:
    """`text` unchanged, or `UnstorableText`: U+0000 and lone surrogates cannot be stored exactly
    by every backend (PostgreSQL text refuses U+0000; UTF-8 has no surrogates), so none takes them."""
    if "\x00" in text:
        raise UnstorableText(f"{param} contains the character U+0000, which cannot be stored", param=param)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UnstorableText(f"{param} contains a lone surrogate, which is not valid Unicode text", param=param) from None
    return text


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _as_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


class Preference(Frozen):
    """One stored preference. Its id names it for PATCH `remove` and never changes meaning.
    `updated_at` equals `created_at` today: no operation edits a preference in place (PUT keeps
    the texts it finds unchanged and replaces the rest); it is there for a future edit."""

    id: str
    text: str
    created_at: AwareDatetime
    updated_at: AwareDatetime

    _utc = field_validator("created_at", "updated_at")(_as_utc)


class Profile(Frozen):
    """A user's ordered preferences; `updated_at` is the time of the last PUT or PATCH."""

    user_id: str
    preferences: tuple[Preference, ...] = ()
    updated_at: AwareDatetime

    _utc = field_validator("updated_at")(_as_utc)

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(preference.text for preference in self.preferences)


class SampleTexts(Frozen):
    """The texts behind a verdict, kept only when `monitor.store_samples` is on."""

    query: str
    preferences: tuple[str, ...] = ()
    reference: str | None = None
    answer: str | None = None


class SampleLabel(Frozen):
    """What an operator says the judges should have answered for a sample: the follow score (1–5)
    and the consistency verdict. Kept beside the sample and deleted with it."""

    id: str = Field(default_factory=new_label_id)
    sample_id: str
    created_at: AwareDatetime = Field(default_factory=utcnow)
    follow_score: int = Field(ge=1, le=5)
    consistency: Verdict

    _utc = field_validator("created_at")(_as_utc)


class JudgedSample(Frozen):
    """One sampled request as the monitor's judges saw it. `verdict` is None when the consistency
    judge failed; `broken` / `followed` / `robust` are None when they could not be decided.
    `labels` are the operators' labels, oldest first; the store fills them in when it reads."""

    id: str = Field(default_factory=new_sample_id)
    created_at: AwareDatetime = Field(default_factory=utcnow)
    request_id: str
    user_id: str | None = None
    model: str
    strategy: Strategy
    role: Role
    relevance: Relevance
    verdict: Verdict | None = None
    broken: bool | None = None
    followed: bool | None = None
    robust: bool | None = None
    follow_score: int | None = Field(None, ge=1, le=5)
    reasons: dict[str, str] = Field(default_factory=dict)
    texts: SampleTexts | None = None
    labels: tuple[SampleLabel, ...] = ()
    fingerprint: str | None = None  # of the judges that made the verdicts (None: stored before fingerprints)
    judges: dict[str, str] = Field(default_factory=dict)  # each judge's fingerprint, by judge name

    _utc = field_validator("created_at")(_as_utc)

    def check_storable(self) -> None:
        """Raise `UnstorableText` when any string of the sample cannot be stored exactly."""
        fields = [("id", self.id), ("request_id", self.request_id), ("model", self.model), ("user_id", self.user_id or "")]
        fields += [("fingerprint", self.fingerprint or "")] + [(f"judges.{name}", f"{name} {fp}") for name, fp in self.judges.items()]
        fields += [(f"reasons.{name}", f"{name} {reason}") for name, reason in self.reasons.items()]
        if self.texts is not None:
            fields += [("texts.query", self.texts.query), ("texts.reference", self.texts.reference or "")]
            fields += [("texts.answer", self.texts.answer or "")]
            fields += [("texts.preferences", text) for text in self.texts.preferences]
        for param, text in fields:
            check_storable(text, param)


class SampleCounts(Frozen):
    """Judged-sample counts of one (strategy, role) over a window; ratios are the reader's job
    (breakage = broken / (judged - uncomparable), as in DESIGN.md "Online adaptation"). `broken`,
    `not_followed` and `not_robust` count comparable samples only, so each is at most
    judged - uncomparable; a relevant sample whose follow verdict is missing is not followed, as in
    the monitor's counters. `judge_failed` counts samples without a consistency verdict,
    `follow_missing` relevant samples without a follow verdict. Groups are per judge fingerprint
    too, so verdicts of a changed judge (a re-judge) never mix with the old ones."""

    strategy: str
    role: str
    fingerprint: str | None = None  # the judges' (None: samples stored before fingerprints)
    samples: int = 0
    judged: int = 0
    broken: int = 0
    not_followed: int = 0
    not_robust: int = 0
    uncomparable: int = 0
    judge_failed: int = 0
    follow_missing: int = 0


class SampleSummary(Frozen):
    since: AwareDatetime
    window_seconds: float
    groups: tuple[SampleCounts, ...] = ()


class SampleBucket(Frozen):
    """The counts of one (strategy, role) in one time bucket, which starts at `start`."""

    start: AwareDatetime
    counts: SampleCounts

    _utc = field_validator("start")(_as_utc)


class SampleSeries(Frozen):
    """`buckets` consecutive buckets of `bucket_seconds` from `since`; only non-empty ones appear."""

    since: AwareDatetime
    bucket_seconds: float
    buckets: int
    points: tuple[SampleBucket, ...] = ()

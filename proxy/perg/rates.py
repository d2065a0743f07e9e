"""PERG metrics (DESIGN.md, "PERG, exactly") from per-case records, with bootstrap intervals.

Q* is the set of cases answered correctly without preferences. Over Q*:
- BR  = 1 − mean(Acc_pref);
- AFR = 1 − mean(Followed), over the Q* cases with a relevant preference;
- RER = 1 − mean(Robust), Robust = Acc ∧ Followed when the preferences are relevant, Acc otherwise.
A relevant case whose follow verdict is missing (the judge failed) is *not followed*, the paper's
rule, the same in the monitor and the canary; such cases are also counted on their own
(`n_follow_missing`), so a failing judge is never mistaken for a good model.
PVR = 1 − |A_pref ∩ A_nopref| / |A_pref ∪ A_nopref| over all cases; 0.0 when both sets are empty
(nothing was answered correctly either way, so nothing varied).
A rate over an empty set (no Q*, no relevant case) is None, never 0. Unextractable answers are
wrong (the paper's rule); `breakage_rate_readable` is BR over the Q* cases whose answer with
preferences could be read, next to it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .datasets import SETTINGS, Setting
from .stats import bootstrap_intervals, derive_seed

THRESHOLDS = (1, 2, 3, 4, 5)
CaseOutcome = tuple[bool, bool, bool, bool | None]
"""What the metrics need from a record: (correct_nopref, correct_pref, relevant, followed)."""


class Record(BaseModel):
    """The outcome of one PERG case under one strategy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    item_id: str
    strategy: str = "naive"
    setting: Setting = "relevant"
    source: str = ""
    category: str | None = None
    relevant: bool = True
    correct_nopref: bool
    correct_pref: bool
    followed: bool | None = None
    follow_score: int | None = Field(None, ge=1, le=5)
    preference_category: str | None = None
    extracted_nopref: bool = True
    extracted_pref: bool = True

    @model_validator(mode="after")
    def _unextracted_is_wrong(self) -> Record:
        if (self.correct_nopref and not self.extracted_nopref) or (self.correct_pref and not self.extracted_pref):
            raise ValueError("an answer whose letter could not be extracted cannot be correct")
        return self

    @property
    def outcome(self) -> CaseOutcome:
        return (self.correct_nopref, self.correct_pref, self.relevant, self.followed)


class Rates(NamedTuple):
    breakage_rate: float | None
    alignment_failure_rate: float | None
    robustness_error_rate: float | None
    performance_variation: float


def followed_or_not(followed: bool | None) -> bool:
    """The paper's rule for a follow verdict: a missing one (the judge failed) is not followed."""
    return followed is True


def robust(correct_pref: bool, relevant: bool, followed: bool | None) -> bool:
    """Robust = Acc ∧ Followed when relevant (a missing verdict: not followed), Acc otherwise."""
    return correct_pref and (not relevant or followed_or_not(followed))


def rates_from_counts(counts: Mapping[CaseOutcome, int]) -> Rates:
    """The four rates from outcome counts (a resample may count one case several times)."""
    q_star = kept = q_relevant = followed = robust_ok = union = 0
    for (nopref, pref, relevant, verdict), n in counts.items():
        union += n if nopref or pref else 0
        if not nopref:
            continue
        q_star += n
        kept += n if pref else 0
        if relevant:
            q_relevant += n
            followed += n if followed_or_not(verdict) else 0
        robust_ok += n if robust(pref, relevant, verdict) else 0
    return Rates(
        breakage_rate=1 - kept / q_star if q_star else None,
        alignment_failure_rate=1 - followed / q_relevant if q_relevant else None,
        robustness_error_rate=1 - robust_ok / q_star if q_star else None,
        performance_variation=1 - kept / union if union else 0.0,
    )


def readable_breakage(records: Sequence[Record]) -> tuple[float | None, int]:
    """BR over the Q* cases whose answer with preferences was read, and how many those are."""
    readable = [r for r in records if r.correct_nopref and r.extracted_pref]
    return (1 - sum(r.correct_pref for r in readable) / len(readable) if readable else None), len(readable)


def point_rates(records: Iterable[Record]) -> Rates:
    return rates_from_counts(Counter(record.outcome for record in records))


def afr_by_threshold(records: Sequence[Record]) -> dict[int, float | None]:
    """AFR if "followed" meant follow_score ≥ t, for t = 1..5, over the relevant Q* cases (a missing
    score is not followed, as in AFR itself)."""
    scores = [r.follow_score for r in records if r.correct_nopref and r.relevant]
    return {t: (1 - sum(s is not None and s >= t for s in scores) / len(scores)) if scores else None for t in THRESHOLDS}


def follow_distribution(records: Iterable[Record]) -> dict[int, int]:
    """How many cases got each follow score 1..5 (cases without a score are not counted)."""
    counts = Counter(r.follow_score for r in records if r.follow_score is not None)
    return {score: counts.get(score, 0) for score in THRESHOLDS}


class Estimate(BaseModel):
    """A rate and its bootstrap interval; all None when the rate is undefined."""

    model_config = ConfigDict(frozen=True)

    value: float | None
    low: float | None = None
    high: float | None = None


class GroupMetrics(BaseModel):
    """The metrics of one strategy × setting, over all cases or one source / category."""

    model_config = ConfigDict(frozen=True)

    strategy: str
    setting: str
    dimension: str  # "all", "source", "category" or "preference_category"
    group: str
    n_items: int
    n_q_star: int
    n_follow_missing: int
    accuracy_nopref: float
    accuracy_pref: float
    unextractable_nopref: float
    unextractable_pref: float
    breakage_rate: Estimate
    breakage_rate_readable: float | None = None
    n_q_star_readable: int = 0
    alignment_failure_rate: Estimate
    robustness_error_rate: Estimate
    performance_variation: Estimate
    follow_scores: dict[int, int]
    afr_by_threshold: dict[int, float | None]


def group_metrics(records: Sequence[Record], key: tuple[str, str, str, str], *, resamples: int, seed: int, level: float) -> GroupMetrics:
    """Metrics of one non-empty group; the bootstrap seed derives from `seed` and the group's key."""
    strategy, setting, dimension, group = key
    n = len(records)
    point = point_rates(records)
    intervals = bootstrap_intervals(
        [r.outcome for r in records], rates_from_counts, resamples=resamples, seed=derive_seed(seed, *key), level=level
    )
    estimates = [_estimate(value, interval) for value, interval in zip(point, intervals, strict=True)]
    readable, n_readable = readable_breakage(records)
    return GroupMetrics(
        strategy=strategy,
        setting=setting,
        dimension=dimension,
        group=group,
        n_items=n,
        n_q_star=sum(r.correct_nopref for r in records),
        n_follow_missing=sum(r.correct_nopref and r.relevant and r.followed is None for r in records),
        accuracy_nopref=sum(r.correct_nopref for r in records) / n,
        accuracy_pref=sum(r.correct_pref for r in records) / n,
        unextractable_nopref=sum(not r.extracted_nopref for r in records) / n,
        unextractable_pref=sum(not r.extracted_pref for r in records) / n,
        breakage_rate=estimates[0],
        breakage_rate_readable=readable,
        n_q_star_readable=n_readable,
        alignment_failure_rate=estimates[1],
        robustness_error_rate=estimates[2],
        performance_variation=estimates[3],
        follow_scores=follow_distribution(records),
        afr_by_threshold=afr_by_threshold(records),
    )


def _estimate(value: float | None, interval: tuple[float, float] | None) -> Estimate:
    if value is None or interval is None:
        return Estimate(value=value)
    return Estimate(value=value, low=interval[0], high=interval[1])


def grouped(records: Iterable[Record]) -> dict[tuple[str, str, str, str], list[Record]]:
    """Records by (strategy, setting, dimension, group): every case under "all", then by source, by
    category and by preference category (a case without one is only in the groups it has). Sorted keys."""
    groups: dict[tuple[str, str, str, str], list[Record]] = {}
    for record in records:
        keys = [("all", "all"), ("source", record.source)]
        if record.category is not None:
            keys.append(("category", record.category))
        if record.preference_category is not None:
            keys.append(("preference_category", record.preference_category))
        for dimension, group in keys:
            groups.setdefault((record.strategy, record.setting, dimension, group), []).append(record)
    order = {"all": 0, "source": 1, "category": 2, "preference_category": 3}
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], _setting_rank(kv[0][1]), order[kv[0][2]], kv[0][3])))


def _setting_rank(setting: str) -> int:
    return SETTINGS.index(setting) if setting in SETTINGS else len(SETTINGS)

"""Judge calibration: how well a judge agrees with labelled samples (the math only; no model calls).

The labels are either the *reference labels* shipped with the project (`judge_labels.jsonl`,
written for it by its authors, not collected from human annotators) or a user's own human labels.
Inputs are (label, judge) pairs. A judge value of None is a judge failure: counted in `n_failed`,
left out of every statistic, never read as a score. Confusion matrices have the label on the rows
and the judge's verdict on the columns, in the order of `labels`. Every κ comes with a percentile
bootstrap interval (`level`, default 95%) over the judged pairs, seeded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..perg.datasets import DatasetError, describe
from ..perg.stats import Weights, bootstrap_intervals, cohen_kappa, confusion_matrix, derive_seed

Consistency = Literal["consistent", "contradicts", "cannot_compare"]
CONSISTENCY_LABELS: tuple[Consistency, ...] = ("consistent", "contradicts", "cannot_compare")
LIKERT = (1, 2, 3, 4, 5)
BUILTIN_LABELS = "judge_labels.jsonl"


class JudgeLabel(BaseModel):
    """One labelled sample: what the follow and consistency judges see, and the labelled verdicts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    query: str = Field(min_length=1)
    preference: str = Field(min_length=1)
    answer_without: str
    answer_with: str
    follow_score: int = Field(ge=1, le=5)
    consistency: Consistency


def load_judge_labels(path: str | Path | None = None) -> list[JudgeLabel]:
    """Labelled samples from JSONL; without a path, the reference labels written for this project."""
    if path is None:
        name, text = BUILTIN_LABELS, (resources.files("proxy.perg") / "data" / BUILTIN_LABELS).read_text("utf-8")
    else:
        name, text = str(path), Path(path).read_text(encoding="utf-8")
    labels: list[JudgeLabel] = []
    problems: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            labels.append(JudgeLabel.model_validate_json(line))
        except ValueError as error:
            problems.append((number, describe(error)))
    if problems:
        raise DatasetError(name, problems)
    return labels


class Interval(BaseModel):
    model_config = ConfigDict(frozen=True)

    low: float
    high: float


class Agreement(BaseModel):
    """Agreement on one kind of verdict; `kappa_interval` is its bootstrap interval (None when undefined)."""

    model_config = ConfigDict(frozen=True)

    labels: tuple[str, ...]
    n: int
    n_failed: int
    accuracy: float | None
    kappa: float | None
    kappa_interval: Interval | None = None
    confusion: list[list[int]]


class FollowAgreement(Agreement):
    """Agreement on the 1–5 follow score, plus the binary "followed" decision at each threshold."""

    kappa_linear: float | None
    kappa_linear_interval: Interval | None = None
    kappa_quadratic: float | None
    kappa_quadratic_interval: Interval | None = None
    thresholds: dict[int, Agreement]


class Bootstrap(BaseModel):
    """How the κ intervals are drawn."""

    model_config = ConfigDict(frozen=True)

    resamples: int = 1000
    seed: int = 0
    level: float = 0.95


def kappa_interval(
    pairs: Sequence[tuple[Hashable, Hashable]], labels: Sequence[Hashable], weights: Weights, bootstrap: Bootstrap, name: str
) -> Interval | None:
    """Percentile-bootstrap interval of Cohen's κ over `pairs` (resampled with replacement)."""

    def statistic(counts: Counter[tuple[Hashable, Hashable]]) -> list[float | None]:
        return [cohen_kappa(list(counts.elements()), labels, weights)]

    (interval,) = bootstrap_intervals(
        list(pairs), statistic, resamples=bootstrap.resamples, seed=derive_seed(bootstrap.seed, name), level=bootstrap.level
    )
    return Interval(low=interval[0], high=interval[1]) if interval else None


class Calibration(BaseModel):
    model_config = ConfigDict(frozen=True)

    follow: FollowAgreement
    consistency: Agreement


def agreement(
    pairs: Sequence[tuple[Hashable, Hashable | None]], labels: Sequence[Hashable], bootstrap: Bootstrap | None = None, name: str = "kappa"
) -> Agreement:
    """Accuracy, unweighted κ (with its interval) and confusion matrix over the pairs the judge answered."""
    judged = [(human, judge) for human, judge in pairs if judge is not None]
    bootstrap = bootstrap or Bootstrap()
    return Agreement(
        labels=tuple(str(label) for label in labels),
        n=len(judged),
        n_failed=len(pairs) - len(judged),
        accuracy=sum(h == j for h, j in judged) / len(judged) if judged else None,
        kappa=cohen_kappa(judged, labels),
        kappa_interval=kappa_interval(judged, labels, None, bootstrap, name),
        confusion=confusion_matrix(judged, labels),
    )


def follow_agreement(pairs: Sequence[tuple[int, int | None]], bootstrap: Bootstrap | None = None) -> FollowAgreement:
    """The Likert score (exact accuracy, κ unweighted / linear / quadratic) and, for t = 1..5, the
    decision "followed" = score ≥ t (accuracy, unweighted κ, 2×2 matrix with not-followed first)."""
    bootstrap = bootstrap or Bootstrap()
    judged = [(human, judge) for human, judge in pairs if judge is not None]
    thresholds = {
        t: agreement([(h >= t, None if j is None else j >= t) for h, j in pairs], (False, True), bootstrap, f"follow>={t}") for t in LIKERT
    }
    return FollowAgreement(
        **agreement(pairs, LIKERT, bootstrap, "follow").model_dump(),
        kappa_linear=cohen_kappa(judged, LIKERT, "linear"),
        kappa_linear_interval=kappa_interval(judged, LIKERT, "linear", bootstrap, "follow-linear"),
        kappa_quadratic=cohen_kappa(judged, LIKERT, "quadratic"),
        kappa_quadratic_interval=kappa_interval(judged, LIKERT, "quadratic", bootstrap, "follow-quadratic"),
        thresholds=thresholds,
    )


def calibrate(
    labels: Sequence[JudgeLabel],
    follow_scores: Sequence[int | None],
    consistency_verdicts: Sequence[Consistency | None],
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> Calibration:
    """Agreement of the judges' verdicts (one per label, None for a failure) with the labels."""
    if not len(labels) == len(follow_scores) == len(consistency_verdicts):
        raise ValueError("one follow score and one consistency verdict per label")
    bootstrap = Bootstrap(resamples=resamples, seed=seed)
    return Calibration(
        follow=follow_agreement([(label.follow_score, score) for label, score in zip(labels, follow_scores, strict=True)], bootstrap),
        consistency=agreement(
            [(label.consistency, verdict) for label, verdict in zip(labels, consistency_verdicts, strict=True)],
            CONSISTENCY_LABELS,
            bootstrap,
            "consistency",
        ),
    )

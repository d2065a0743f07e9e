"""Judge calibration: how well a judge agrees with human labels (the math only; no model calls).

Inputs are (human, judge) pairs. A judge value of None is a judge failure: counted in `n_failed`,
left out of every statistic, never read as a score. Confusion matrices have the human's label on
the rows and the judge's on the columns, in the order of `labels`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..perg.datasets import DatasetError, describe

Consistency = Literal["consistent", "contradicts", "cannot_compare"]
CONSISTENCY_LABELS: tuple[Consistency, ...] = ("consistent", "contradicts", "cannot_compare")
LIKERT = (1, 2, 3, 4, 5)
BUILTIN_LABELS = "judge_labels.jsonl"
Weights = Literal["linear", "quadratic"] | None


class JudgeLabel(BaseModel):
    """One human-labelled sample: what the follow and consistency judges see, and the human verdicts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    query: str = Field(min_length=1)
    preference: str = Field(min_length=1)
    answer_without: str
    answer_with: str
    follow_score: int = Field(ge=1, le=5)
    consistency: Consistency


def load_judge_labels(path: str | Path | None = None) -> list[JudgeLabel]:
    """Labelled samples from JSONL; the built-in set written for this project when no path is given."""
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


def confusion_matrix(pairs: Sequence[tuple[Hashable, Hashable]], labels: Sequence[Hashable]) -> list[list[int]]:
    """Counts of (human, judge) pairs; rows are the human's label, columns the judge's."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for human, judge in pairs:
        if human not in index or judge not in index:
            raise ValueError(f"label outside {list(labels)}: {(human, judge)}")
        matrix[index[human]][index[judge]] += 1
    return matrix


def cohen_kappa(pairs: Sequence[tuple[Hashable, Hashable]], labels: Sequence[Hashable], weights: Weights = None) -> float | None:
    """Cohen's κ = 1 − observed / chance-expected disagreement. Unweighted: every disagreement weighs 1;
    `linear` / `quadratic`: |i − j| / (k − 1), or its square, for ordered labels. None when undefined
    (no pairs, or no disagreement expected by chance, e.g. both raters always give the same label)."""
    matrix = confusion_matrix(pairs, labels)
    n = len(pairs)
    if n == 0:
        return None
    rows = [sum(row) for row in matrix]
    columns = [sum(column) for column in zip(*matrix, strict=True)]
    cells = [(i, j) for i in range(len(labels)) for j in range(len(labels))]
    weight = [[_weight(i, j, len(labels), weights) for j in range(len(labels))] for i in range(len(labels))]
    observed = sum(weight[i][j] * matrix[i][j] for i, j in cells) / n
    expected = sum(weight[i][j] * rows[i] * columns[j] for i, j in cells) / (n * n)
    if expected == 0:
        return None
    return 1 - observed / expected


def _weight(i: int, j: int, k: int, weights: Weights) -> float:
    if i == j:
        return 0.0
    if weights is None:
        return 1.0
    distance = abs(i - j) / (k - 1)
    return distance if weights == "linear" else distance**2


class Agreement(BaseModel):
    """Agreement on one kind of verdict."""

    model_config = ConfigDict(frozen=True)

    labels: tuple[str, ...]
    n: int
    n_failed: int
    accuracy: float | None
    kappa: float | None
    confusion: list[list[int]]


class FollowAgreement(Agreement):
    """Agreement on the 1–5 follow score, plus the binary "followed" decision at each threshold."""

    kappa_linear: float | None
    kappa_quadratic: float | None
    thresholds: dict[int, Agreement]


class Calibration(BaseModel):
    model_config = ConfigDict(frozen=True)

    follow: FollowAgreement
    consistency: Agreement


def agreement(pairs: Sequence[tuple[Hashable, Hashable | None]], labels: Sequence[Hashable]) -> Agreement:
    """Accuracy, unweighted κ and confusion matrix over the pairs the judge answered."""
    judged = [(human, judge) for human, judge in pairs if judge is not None]
    return Agreement(
        labels=tuple(str(label) for label in labels),
        n=len(judged),
        n_failed=len(pairs) - len(judged),
        accuracy=sum(h == j for h, j in judged) / len(judged) if judged else None,
        kappa=cohen_kappa(judged, labels),
        confusion=confusion_matrix(judged, labels),
    )


def follow_agreement(pairs: Sequence[tuple[int, int | None]]) -> FollowAgreement:
    """The Likert score (exact accuracy, κ unweighted / linear / quadratic) and, for t = 1..5, the
    decision "followed" = score ≥ t (accuracy, unweighted κ, 2×2 matrix with not-followed first)."""
    judged = [(human, judge) for human, judge in pairs if judge is not None]
    thresholds = {t: agreement([(h >= t, None if j is None else j >= t) for h, j in pairs], (False, True)) for t in LIKERT}
    return FollowAgreement(
        **agreement(pairs, LIKERT).model_dump(),
        kappa_linear=cohen_kappa(judged, LIKERT, "linear"),
        kappa_quadratic=cohen_kappa(judged, LIKERT, "quadratic"),
        thresholds=thresholds,
    )


def calibrate(
    labels: Sequence[JudgeLabel],
    follow_scores: Sequence[int | None],
    consistency_verdicts: Sequence[Consistency | None],
) -> Calibration:
    """Agreement of the judges' verdicts (one per label, None for a failure) with the human labels."""
    if not len(labels) == len(follow_scores) == len(consistency_verdicts):
        raise ValueError("one follow score and one consistency verdict per label")
    return Calibration(
        follow=follow_agreement([(label.follow_score, score) for label, score in zip(labels, follow_scores, strict=True)]),
        consistency=agreement(
            [(label.consistency, verdict) for label, verdict in zip(labels, consistency_verdicts, strict=True)], CONSISTENCY_LABELS
        ),
    )

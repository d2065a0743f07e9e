"""How well the monitor's judges agree with the operators' labels on stored samples: Cohen's κ per
judge and judge fingerprint, from the verdicts stored with each sample (nothing is judged again).

A label (operator page, or `POST /perg/monitor/samples/{id}/label`) says what the follow score and
the consistency verdict should have been for the sample's texts. Each label is paired with the
stored verdicts of every sample of the same request and role (`Store.labelled_verdicts`: the
sample labelled and its re-judged siblings), each under the fingerprint of the judge that made that verdict, so a changed judge's
agreement is never mixed with the old one's. Consistency κ is unweighted over the three verdicts;
follow κ is linearly weighted over the 1–5 scores (as `eval judge` reports it). A sample without a
verdict of that judge (the judge failed, or the preference was judged irrelevant: no follow
score) gives no pair. `perg_monitor_judge_agreement{judge}` is the κ of the current fingerprint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..preferences.models import JudgedSample
from .stats import cohen_kappa

CONSISTENCY = ("consistent", "contradicts", "cannot_compare")
LIKERT = (1, 2, 3, 4, 5)
UNKNOWN = "unknown"  # the fingerprint of verdicts stored before fingerprints existed


def _pairs(samples: Sequence[JudgedSample], keep: Callable[[JudgedSample, str, str], bool]) -> dict[tuple[str, str], list]:
    pairs: dict[tuple[str, str], list[tuple[Any, Any]]] = {}
    for sample in samples:
        for label in sample.labels:
            consistency, follow = sample.judges.get("consistency", UNKNOWN), sample.judges.get("follow", UNKNOWN)
            if sample.verdict is not None and keep(sample, "consistency", consistency):
                pairs.setdefault(("consistency", consistency), []).append((label.consistency, sample.verdict))
            if sample.follow_score is not None and keep(sample, "follow", follow):
                pairs.setdefault(("follow", follow), []).append((label.follow_score, sample.follow_score))
    return pairs


def _row(judge: str, fingerprint: str | None, found: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
    labels = CONSISTENCY if judge == "consistency" else LIKERT
    kappa = cohen_kappa(found, labels, "linear" if judge == "follow" else None) if found else None
    exact = sum(human == judged for human, judged in found) / len(found) if found else None
    return {"judge": judge, "fingerprint": fingerprint, "labels": len(found), "exact_agreement": exact, "kappa": kappa}


def agreement_rows(samples: Sequence[JudgedSample]) -> list[dict[str, Any]]:
    """One row per (judge, fingerprint): the number of labels paired, exact agreement, and κ."""
    pairs = _pairs(samples, lambda sample, judge, fingerprint: True)
    return [_row(judge, fingerprint, found) for (judge, fingerprint), found in sorted(pairs.items())]


def current_agreement(samples: Sequence[JudgedSample], current: Callable[[str], Mapping[str, str]]) -> dict[str, dict[str, Any]]:
    """Per judge, the row over the labelled samples whose verdict the current judge made:
    `current(request model)` is each judge's fingerprint for a request of that model."""
    pairs = _pairs(samples, lambda sample, judge, fingerprint: current(sample.model).get(judge) == fingerprint)
    rows = {}
    for judge in ("consistency", "follow"):
        found = [pair for (name, _), group in pairs.items() if name == judge for pair in group]
        fingerprints = sorted({fingerprint for (name, fingerprint) in pairs if name == judge})
        rows[judge] = _row(judge, ",".join(fingerprints) or None, found)
    return rows


def export(metrics: Any, current: Mapping[str, dict[str, Any]]) -> None:
    """Set `perg_monitor_judge_agreement{judge}` and its label count from the current rows."""
    for judge, row in current.items():
        metrics.monitor_judge_agreement.labels(judge).set(float("nan") if row["kappa"] is None else row["kappa"])
        metrics.monitor_judge_agreement_labels.labels(judge).set(row["labels"])

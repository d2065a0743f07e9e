"""Labels recorded on the monitor's stored samples (the operator page, or
`POST /perg/monitor/samples/{id}/label`), read from the configured store as `eval judge` labels.

Each label becomes one `JudgeLabel`: the sample's query, its preferences (joined by "; " when
there are several, since a label file holds one preference per label), the reference (the answer
without preferences) as `answer_without`, the judged answer as `answer_with`, and the operator's
follow score and consistency verdict. A sample whose texts were not stored
(`monitor.store_samples: false`) cannot be judged again, so its labels are skipped and said so.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ..config import ConfigError, ProfileSettings, load_settings
from ..perg.agreement import agreement_rows
from ..preferences.models import JudgedSample
from ..preferences.store import open_store
from ..preferences.store_errors import StoreError
from .calibration import JudgeLabel

MAX_LABELS = 10000


class StoredLabelsError(Exception):
    """No labels could be read: the message, and the exit code (2 bad input, 1 nothing to measure)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def where(settings: ProfileSettings) -> str:
    """The store named for a report title, never a password."""
    if settings.backend == "sqlite":
        return f"sqlite {settings.path}"
    if settings.backend == "postgres":
        from ..preferences.postgres import describe

        return describe(settings.dsn or "")
    return "the memory store"


def unusable(sample: JudgedSample) -> str | None:
    """Why a sample's labels cannot be judged again, or None."""
    texts = sample.texts
    if texts is None:
        return "its texts were not stored (monitor.store_samples: false)"
    if not texts.query.strip():
        return "its query is empty"
    if not texts.preferences:
        return "it has no preferences"
    if texts.reference is None or texts.answer is None:
        return "its reference or answer is missing"
    return None


def judge_labels_of(samples: list[JudgedSample]) -> tuple[list[JudgeLabel], list[str]]:
    """The labels of `samples` as `JudgeLabel`s, and one line per sample skipped."""
    labels: list[JudgeLabel] = []
    skipped: list[str] = []
    for sample in samples:
        reason = unusable(sample)
        if reason is not None or sample.texts is None:
            skipped.append(f"{sample.id}: {len(sample.labels)} label(s) skipped: {reason}")
            continue
        texts = sample.texts
        for label in sample.labels:
            labels.append(
                JudgeLabel(
                    query=texts.query,
                    preference="; ".join(texts.preferences),
                    answer_without=texts.reference or "",
                    answer_with=texts.answer or "",
                    follow_score=label.follow_score,
                    consistency=label.consistency,
                )
            )
    return labels, skipped


async def read_stored_agreement(settings: ProfileSettings, limit: int = MAX_LABELS) -> list[dict[str, Any]]:
    """Cohen's κ of the verdicts stored with the labelled samples (what the monitor's judges said
    at the time), per judge and judge fingerprint (`perg/agreement.py`)."""
    async with open_store(settings) as store:
        return agreement_rows(await store.labelled_verdicts(limit))


def stored_agreement(config: str | None) -> list[dict[str, Any]]:
    """`read_stored_agreement` for the store of the configuration file `config`; [] when unreadable."""
    path = config or os.environ.get("PERG_CONFIG")
    if not path:
        return []
    try:
        return asyncio.run(read_stored_agreement(load_settings(path).profiles))
    except (ConfigError, StoreError):
        return []


def render_stored_agreement(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of `read_stored_agreement`'s rows."""
    lines = [
        "",
        "## The monitor's stored verdicts against the same labels, per judge fingerprint",
        "",
        "| judge | fingerprint | labels | exact agreement | Cohen's κ |",
        "|---|---|---:|---:|---:|",
    ]
    for row in rows:
        exact = f"{row['exact_agreement']:.3f}" if row["exact_agreement"] is not None else "n/a"
        kappa = f"{row['kappa']:.3f}" if row["kappa"] is not None else "n/a"
        lines.append(f"| {row['judge']} | {row['fingerprint']} | {row['labels']} | {exact} | {kappa} |")
    lines.append("")
    lines.append("κ: consistency unweighted, follow linearly weighted; `unknown`: verdicts stored before fingerprints.")
    return "\n".join(lines) + "\n"


async def read_stored_labels(settings: ProfileSettings, limit: int = MAX_LABELS) -> tuple[list[JudgeLabel], list[str]]:
    """The newest `limit` labels in the store as `JudgeLabel`s, and the samples skipped."""
    async with open_store(settings) as store:
        samples = await store.labelled_samples(limit)
    return judge_labels_of(samples)


def labels_from_store(config: str | None) -> tuple[list[JudgeLabel], str, list[str]]:
    """(labels, where they come from, the samples skipped) from the store of the proxy's
    configuration file `config` (default `$PERG_CONFIG`); `StoredLabelsError` when none."""
    path = config or os.environ.get("PERG_CONFIG")
    if not path:
        raise StoredLabelsError("--from-store needs the proxy's configuration: --config FILE (or $PERG_CONFIG)")
    try:
        settings = load_settings(path).profiles
        labels, skipped = asyncio.run(read_stored_labels(settings))
    except (ConfigError, StoreError) as error:
        raise StoredLabelsError(str(error)) from None
    if not labels:
        raise StoredLabelsError(f"no usable label in {where(settings)} (record them on the operator page, /perg/ui)", 1)
    return labels, f"the labels operators recorded on the samples in {where(settings)}", skipped

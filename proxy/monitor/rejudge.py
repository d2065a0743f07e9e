"""`perg-proxy monitor rejudge --since 24h [--judge follow]`: the current judges over stored samples.

Every stored sample created in the window whose texts were kept (`monitor.store_samples: true`)
is judged again with the judges the configuration describes now: all three, or only those named
with `--judge` (the others' verdicts, and their fingerprints, are copied from the sample). The new
verdicts are stored as a new sample beside the old one, with the same request id, role, strategy
and creation time, and the new judge fingerprint; the old sample is never changed. A sample whose
fingerprint would not change (the judges are the same) is skipped, and so is one re-judged
already (the store keeps one sample per request, role and fingerprint), so running it twice is
harmless. The summary and the operator page group samples per fingerprint, so the two sets of
figures are reported side by side, never mixed. Nothing here counts in Prometheus.
"""

from __future__ import annotations

import asyncio
import re
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..config import Settings
from ..metrics import private_metrics
from ..preferences.handle import StoreHandle
from ..preferences.models import JudgedSample, SampleSummary, utcnow
from ..prompts.loader import Prompts
from .evaluate import JUDGE_NAMES, Evaluator, outcome
from .service import Monitor

SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
PAGE = 200


def parse_since(text: str) -> float:
    """Seconds from `90m`, `24h`, `7d`, `3600s` or `3600`."""
    found = SINCE.match(text.strip())
    if not found or float(found.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration such as 90m, 24h, 7d or a number of seconds")
    return float(found.group(1)) * UNITS[found.group(2)]


@dataclass
class RejudgeReport:
    since_seconds: float
    judges: tuple[str, ...]
    seen: int = 0
    stored: int = 0
    without_texts: int = 0
    unchanged: int = 0
    done_already: int = 0
    failed: int = 0  # judge calls that failed (the sample is stored with the verdict missing)
    fingerprints: dict[str, int] = field(default_factory=dict)  # new fingerprint -> samples stored
    summary: SampleSummary | None = None


async def rejudge(settings: Settings, since_seconds: float, only: set[str], *, limit: int = 10000, concurrency: int = 4) -> RejudgeReport:
    names = tuple(name for name in JUDGE_NAMES if not only or name in only)
    report = RejudgeReport(since_seconds, names)
    store = StoreHandle(settings.profiles)
    monitor = Monitor(settings, private_metrics(), store, Prompts.load(settings.personalization.prompts), judge_worker=True)
    evaluator = await monitor.open_judges()
    try:
        opened = await store.get()
        since = utcnow() - timedelta(seconds=since_seconds)
        gate = asyncio.Semaphore(concurrency)
        after = None
        while report.seen < limit:
            found, more = await opened.list_samples(limit=min(PAGE, limit - report.seen), after=after)
            page = [sample for sample in found if sample.created_at >= since]
            more = more and len(page) == len(found)  # newest first: an older one ends the window
            report.seen += len(page)
            await asyncio.gather(*(_one(evaluator, sample, set(names), report, gate) for sample in page))
            if not more or not page:
                break
            after = page[-1].id
        report.summary = await opened.sample_summary(since_seconds)
    finally:
        await monitor.close_judges()
        await store.close()
    return report


async def _one(evaluator: Evaluator, sample: JudgedSample, names: set[str], report: RejudgeReport, gate: asyncio.Semaphore) -> None:
    texts = sample.texts
    if texts is None or texts.reference is None or texts.answer is None or not texts.query:
        report.without_texts += 1
        return
    current, _ = evaluator.fingerprints(sample.model)
    planned = {name: current[name] if name in names else sample.judges.get(name, "unknown") for name in JUDGE_NAMES}
    if planned == sample.judges:
        report.unchanged += 1
        return
    async with gate:
        new = await _judged_again(evaluator, sample, names, current, report)
    if new is None:
        report.done_already += 1
        return
    store = await evaluator.store.get()
    if await store.add_sample(new):
        report.stored += 1
        assert new.fingerprint is not None
        report.fingerprints[new.fingerprint] = report.fingerprints.get(new.fingerprint, 0) + 1
    else:
        report.done_already += 1


async def _judged_again(
    evaluator: Evaluator, sample: JudgedSample, names: set[str], current: dict[str, str], report: RejudgeReport
) -> JudgedSample | None:
    """The sample judged by the current judges named in `names` (the others' verdicts kept);
    None when the store holds that (request, role, fingerprint) already."""
    from ..perg.judges import sample_fingerprint

    texts = sample.texts
    assert texts is not None and texts.reference is not None and texts.answer is not None
    judge, model = evaluator.judges(sample.model)
    judges = dict(sample.judges)
    reasons = dict(sample.reasons)
    relevance, verdict, score = sample.relevance, sample.verdict, sample.follow_score

    async def call(name: str, pending: Any) -> Any:
        result = await evaluator.call(name, pending)
        if result is None:
            report.failed += 1
        return result

    if "relevance" in names:
        found = await call("relevance", judge.relevance(model, texts.query, texts.preferences))
        relevance = "unknown" if found is None else ("relevant" if found.relevant else "irrelevant")
        reasons.pop("relevance", None)
        if found is not None:
            reasons["relevance"] = found.reason
        judges["relevance"] = current["relevance"]
    if "consistency" in names:
        found_c = await call("consistency", judge.consistency(model, texts.query, texts.reference, texts.answer))
        verdict = None if found_c is None else found_c.verdict
        reasons.pop("consistency", None)
        if found_c is not None:
            reasons["consistency"] = found_c.reason
        judges["consistency"] = current["consistency"]
    if relevance != "relevant":
        score = None
        reasons.pop("follow", None)
    elif "follow" in names or score is None:  # a newly relevant sample needs a follow verdict
        found_f = await call("follow", judge.follow(model, texts.query, texts.preferences, texts.reference, texts.answer))
        score = None if found_f is None else found_f.score
        reasons.pop("follow", None)
        if found_f is not None:
            reasons["follow"] = found_f.reason
        judges["follow"] = current["follow"]
    for name in JUDGE_NAMES:
        judges.setdefault(name, "unknown")
    fingerprint = sample_fingerprint(judges)
    store = await evaluator.store.get()
    if await store.verdict_exists(sample.request_id, sample.role, fingerprint):
        return None
    broken, followed, robust = outcome(relevance, verdict, score, evaluator.settings.follow_threshold)
    return JudgedSample(
        created_at=sample.created_at, request_id=sample.request_id, user_id=sample.user_id, model=sample.model,
        strategy=sample.strategy, role=sample.role, relevance=relevance, verdict=verdict, broken=broken,
        followed=followed, robust=robust, follow_score=score, reasons={k: v[:300] for k, v in reasons.items()},
        texts=sample.texts, fingerprint=fingerprint, judges=judges,
    )  # fmt: skip


def print_report(report: RejudgeReport) -> None:
    out = sys.stdout
    print(f"re-judged with {', '.join(report.judges)} over the samples of the last {report.since_seconds:g} s:", file=out)
    print(
        f"  seen {report.seen}, stored {report.stored}, unchanged judges {report.unchanged}, "
        f"re-judged already {report.done_already}, without texts {report.without_texts}, judge calls failed {report.failed}",
        file=out,
    )
    for fingerprint, count in sorted(report.fingerprints.items()):
        print(f"  new fingerprint {fingerprint}: {count} sample(s)", file=out)
    if report.summary is not None:
        print("summary per strategy, role and judge fingerprint:", file=out)
        for group in report.summary.groups:
            comparable = group.judged - group.uncomparable
            rate = f"{group.broken / comparable:.3f}" if comparable else "n/a"
            print(
                f"  {group.strategy:<13} {group.role:<7} {group.fingerprint or 'none':<12} samples {group.samples:>6}"
                f"  judged {group.judged:>6}  BR {rate}",
                file=out,
            )

"""Judging one sampled request (DESIGN.md, "Online adaptation").

The reference is the answer the model gives without preferences: Pref-Aligner's stage-1 draft,
or, for `naive` / `off` traffic, one background call made here. Relevance (PrefRel) is judged
once per request. The served answer, and the shadow strategy's answer when the request was
shadow-sampled, are judged identically against the same reference:

- broken: the consistency judge says `contradicts` (`cannot_compare` is counted apart and left
  out of every denominator);
- not followed: a relevant preference and a follow score under `follow_threshold`, or no follow
  verdict at all (the judge failed): the paper's rule, the same in `eval` and the canary;
- not robust: broken, or relevant and not followed.

A judge that fails is counted (`perg_monitor_judge_errors_total`) and gives no verdict, never a
score; each verdict a sample needed and did not get is also counted on its own
(`perg_monitor_verdicts_missing_total{judge}`), so a failing judge is never read as a good model.
A sample without a consistency verdict stays out of the ratios. Background calls go through the monitor's own upstream clients and metrics registry, so
they never count in the request metrics.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from .. import telemetry
from ..config import MonitorSettings
from ..errors import CallFailed
from ..metrics import Metrics
from ..perg.judges import SCHEMAS, ConsistencyVerdict, FollowVerdict, sample_fingerprint
from ..perg.rates import followed_or_not
from ..pipeline.chat import first_content
from ..pipeline.context import PipelineContext
from ..pipeline.inprocess import complete
from ..preferences.handle import StoreHandle
from ..preferences.models import JudgedSample, SampleTexts
from .job import Job

T = TypeVar("T")
JUDGE_NAMES = tuple(SCHEMAS)  # relevance, consistency, follow
SHADOW_OF = {"pref_aligner": "naive", "naive": "pref_aligner", "off": "pref_aligner"}
log = structlog.get_logger("perg.monitor")


@dataclass(slots=True)
class Verdicts:
    consistency: ConsistencyVerdict | None
    follow: FollowVerdict | None


class Evaluator:
    """Judges jobs. With `exactly_once` (the judge workers of the Redis queue) a job may be
    delivered more than once: a role whose verdicts (by the current judges' fingerprint) are
    stored already is not judged again, a sample counts in Prometheus only when the store took it
    (the unique (request id, role, fingerprint) key), and a store failure raises, so the job is
    not acknowledged and is delivered again."""

    def __init__(
        self,
        settings: MonitorSettings,
        judges: Any,
        pipeline: PipelineContext,
        metrics: Metrics,
        store: StoreHandle,
        *,
        exactly_once: bool = False,
    ) -> None:
        self.settings = settings
        self.judges = judges  # request model -> (Judge, judge model)
        self.pipeline = pipeline
        self._metrics = metrics
        self.store = store
        self.exactly_once = exactly_once

    async def run(self, job: Job) -> None:
        with telemetry.evaluation(job.traceparent, job.request_id, job.model, job.strategy):
            await self.evaluate(job)

    def fingerprints(self, request_model: str) -> tuple[dict[str, str], str]:
        """Each current judge's fingerprint for a request of `request_model`, and the sample's."""
        judge, model = self.judges(request_model)
        threshold = self.settings.follow_threshold
        judges = {name: judge.fingerprint(name, model, threshold if name == "follow" else None) for name in JUDGE_NAMES}
        return judges, sample_fingerprint(judges)

    async def evaluate(self, job: Job) -> None:
        shadow = self.settings.shadow_strategy or SHADOW_OF[job.strategy]
        roles = {"served": job.judge_served and bool(job.answer), "shadow": job.shadow and shadow != job.strategy}
        if self.exactly_once:
            _, fingerprint = self.fingerprints(job.model)
            store = await self.store.get()
            for role, wanted in roles.items():
                if wanted and await store.verdict_exists(job.request_id, role, fingerprint):
                    roles[role] = False  # judged by an earlier delivery of this job
            if not any(roles.values()):
                return
        reference = job.reference or await self.call("reference", self.answer_of(job, "off"))
        if not reference:
            return
        judge, model = self.judges(job.model)
        verdict = await self.call("relevance", judge.relevance(model, job.query, job.preferences))
        relevance = "unknown" if verdict is None else ("relevant" if verdict.relevant else "irrelevant")
        reasons = {"relevance": verdict.reason} if verdict is not None else {}
        if roles["served"] and job.answer:
            await self.judge(job, "served", job.strategy, job.answer, reference, relevance, reasons)
        if roles["shadow"]:
            answer = await self.call("shadow", self.answer_of(job, shadow))
            if answer:
                await self.judge(job, "shadow", shadow, answer, reference, relevance, reasons)

    async def answer_of(self, job: Job, strategy: str) -> str:
        preferences = job.preferences if strategy != "off" else ()
        return await self.answer(f"{job.request_id}:{strategy}", job.body, strategy, preferences)

    async def answer(self, request_id: str, body: dict[str, Any], strategy: str, preferences: tuple[str, ...]) -> str:
        """The answer `strategy` gives to a request, through the proxy's own pipeline (not streamed)."""
        data, _ = await complete(self.pipeline, request_id, body, strategy, preferences)
        return first_content(data)[0]

    async def judge(self, job: Job, role: str, strategy: str, answer: str, reference: str, relevance: str, reasons: dict[str, str]) -> None:
        judge, model = self.judges(job.model)
        consistency = await self.call("consistency", judge.consistency(model, job.query, reference, answer))
        follow = None
        if relevance == "relevant":
            follow = await self.call("follow", judge.follow(model, job.query, job.preferences, reference, answer))
        sample = self.score(job, role, strategy, relevance, Verdicts(consistency, follow), reasons)
        telemetry.judged(sample)
        await self.keep(sample, job, reference, answer)

    def score(self, job: Job, role: str, strategy: str, relevance: str, verdicts: Verdicts, reasons: dict[str, str]) -> JudgedSample:
        """Describe the sample for the sample store (`count` counts it in Prometheus)."""
        reasons = dict(reasons)
        if verdicts.follow is not None:
            reasons["follow"] = verdicts.follow.reason
        verdict = verdicts.consistency.verdict if verdicts.consistency is not None else None
        if verdicts.consistency is not None:
            reasons["consistency"] = verdicts.consistency.reason
        score = verdicts.follow.score if verdicts.follow is not None else None
        broken, followed, robust = outcome(relevance, verdict, score, self.settings.follow_threshold)
        judges, fingerprint = self.fingerprints(job.model)
        return JudgedSample(
            request_id=job.request_id, user_id=job.user_id, model=job.model, strategy=strategy, role=role,
            relevance=relevance, verdict=verdict, broken=broken, followed=followed, robust=robust,
            follow_score=verdicts.follow.score if verdicts.follow is not None else None,
            reasons={name: reason[:300] for name, reason in reasons.items()},
            fingerprint=fingerprint, judges=judges,
        )  # fmt: skip

    def count(self, sample: JudgedSample) -> None:
        """Count a judged sample in Prometheus, from what the sample says."""
        m = self._metrics
        labels = (m.model_label(sample.model), sample.strategy, sample.role, sample.relevance)
        if sample.follow_score is not None:
            m.monitor_follow_score.labels(*labels[:3]).observe(sample.follow_score)
        self.count_missing(sample)
        not_followed = sample.relevance == "relevant" and not followed_or_not(sample.followed)
        if sample.verdict == "cannot_compare":
            m.monitor_uncomparable.labels(*labels).inc()
        elif sample.broken is not None:
            m.monitor_judged.labels(*labels).inc()
            _inc_if(sample.broken, m.monitor_broken.labels(*labels))
            _inc_if(not_followed, m.monitor_not_followed.labels(*labels))
            _inc_if(sample.robust is False, m.monitor_not_robust.labels(*labels))

    def count_missing(self, sample: JudgedSample) -> None:
        missing = self._metrics.monitor_verdicts_missing
        if sample.relevance == "unknown":
            missing.labels("relevance").inc()
        if sample.verdict is None:
            missing.labels("consistency").inc()
        if sample.relevance == "relevant" and sample.follow_score is None:
            missing.labels("follow").inc()

    async def keep(self, sample: JudgedSample, job: Job, reference: str, answer: str) -> None:
        if self.settings.store_samples:
            texts = SampleTexts(query=job.query, preferences=job.preferences, reference=reference, answer=answer)
            sample = sample.model_copy(update={"texts": texts})
        if self.exactly_once:  # a store failure raises: the job stays unacknowledged and comes back
            if await (await self.store.get()).add_sample(sample, keep=self.settings.retention):
                self.count(sample)
            else:
                self._metrics.monitor_duplicates.inc()
            return
        self.count(sample)
        try:
            await (await self.store.get()).add_sample(sample, keep=self.settings.retention)
        except Exception as error:  # noqa: BLE001 - the sample store failing never stops the monitor
            self._metrics.monitor_judge_errors.labels("store", type(error).__name__[:40]).inc()
            log.warning("sample_not_stored", request_id=job.request_id, error=str(error)[:200])

    async def call(self, name: str, pending: Awaitable[T]) -> T | None:
        """Await a judge (or background) call: timed, and a failure counted, never raised."""
        started = time.perf_counter()
        try:
            return await pending
        except CallFailed as error:
            self._metrics.monitor_judge_errors.labels(name, error.reason).inc()
            log.info("judge_failed", judge=name, reason=error.reason)
        except Exception as error:  # noqa: BLE001 - a background failure is counted, not raised
            self._metrics.monitor_judge_errors.labels(name, getattr(error, "code", None) or type(error).__name__[:40]).inc()
            log.info("judge_failed", judge=name, error=str(error)[:200])
        finally:
            self._metrics.monitor_judge_duration.labels(name).observe(time.perf_counter() - started)
        return None


def outcome(relevance: str, verdict: str | None, follow_score: int | None, threshold: int) -> tuple[bool | None, bool | None, bool | None]:
    """(broken, followed, robust) of a sample's verdicts, by the rules of the module docstring."""
    followed = None if follow_score is None else follow_score >= threshold
    broken = None if verdict in (None, "cannot_compare") else verdict == "contradicts"
    not_followed = relevance == "relevant" and not followed_or_not(followed)
    robust = None if broken is None else not (broken or not_followed)
    return broken, followed, robust


def _inc_if(condition: bool, counter: Any) -> None:
    if condition:
        counter.inc()

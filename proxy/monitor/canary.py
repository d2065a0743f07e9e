"""Canary probes: labelled multiple-choice items sent through the served pipeline on a schedule,
with and without preferences, so accuracy, and hence BR, AFR, RER and PVR, are exact.

Each run takes the next `items_per_run` cases (item × setting, in a fixed seeded order) and asks
each twice: without preferences (`off`) and with them (the served default strategy). The answer
letter is extracted and compared with the gold one; for a relevant or mixed setting the follow
judge rates the answer with preferences against the one without. A relevant probe without a
follow verdict (the judge failed) is not followed, as in `eval` and the monitor, and is counted in
`perg_monitor_verdicts_missing_total{judge="canary_follow"}`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ..config import Settings
from ..metrics import Metrics
from ..perg.cases import build_cases, load_preferences, mcq_prompt
from ..perg.datasets import PreferenceItem, load_builtin, load_jsonl
from ..perg.extract import extract_letter
from ..perg.rates import followed_or_not
from ..pipeline.context import PipelineContext
from .canary_history import CanaryHistory
from .evaluate import Evaluator

log = structlog.get_logger("perg.canary")


@dataclass(frozen=True, slots=True)
class Probe:
    setting: str
    correct_without: bool
    correct_with: bool
    followed: bool | None


class Canary:
    def __init__(self, settings: Settings, pipeline: PipelineContext, evaluator: Evaluator, metrics: Metrics) -> None:
        self.settings = settings.monitor.canary
        self.strategy = settings.personalization.default_strategy
        self.threshold = settings.monitor.follow_threshold
        self.model = self.settings.model or ""
        self._evaluator = evaluator
        self._metrics = metrics
        items = load_builtin() if self.settings.dataset == "builtin" else self._load(Path(self.settings.dataset))
        self.cases = build_cases(items, load_preferences(), settings=self.settings.settings, seed=self.settings.seed)
        self._next = 0
        self.history = CanaryHistory(metrics.registry)

    @staticmethod
    def _load(path: Path) -> list[Any]:
        loaded = load_jsonl(path)
        if loaded.summary.skipped:
            log.warning("canary_rows_skipped", dataset=str(path), skipped=len(loaded.summary.skipped), first=loaded.summary.skipped[0])
        return loaded.entries

    async def run_forever(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self.settings.interval_seconds)

    async def run_once(self) -> list[Probe]:
        probes = []
        for _ in range(self.settings.items_per_run):
            case = self.cases[self._next % len(self.cases)]
            self._next += 1
            probe = await self.probe(case)
            if probe is not None:
                probes.append(probe)
        self.history.snapshot()
        return probes

    async def probe(self, case: PreferenceItem) -> Probe | None:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": mcq_prompt(case.item)}],
            "temperature": 0,
            "max_tokens": 96,
        }
        evaluator = self._evaluator
        without = await evaluator.call("canary_answer", evaluator.answer(f"canary:{case.key}:without", body, "off", ()))
        with_ = await evaluator.call(
            "canary_answer", evaluator.answer(f"canary:{case.key}:with", body, self.strategy, tuple(case.preferences))
        )
        if without is None or with_ is None:
            self._metrics.canary_errors.labels("answer_failed").inc()
            return None
        followed = None
        if case.relevant:
            judge, model = evaluator.judges(self.model)
            verdict = await evaluator.call(
                "canary_follow", judge.follow(model, body["messages"][0]["content"], case.preferences, without, with_)
            )
            followed = None if verdict is None else verdict.score >= self.threshold
            if verdict is None:
                self._metrics.monitor_verdicts_missing.labels("canary_follow").inc()
        gold = case.item.gold
        probe = Probe(
            case.setting, extract_letter(without, case.item.options) == gold, extract_letter(with_, case.item.options) == gold, followed
        )
        self.count(probe, bool(case.relevant))
        return probe

    def count(self, probe: Probe, relevant: bool) -> None:
        m = self._metrics
        labels = (m.model_label(self.model), self.strategy, probe.setting)
        m.canary_probes.labels(*labels).inc()
        for condition, correct in (("without_preferences", probe.correct_without), ("with_preferences", probe.correct_with)):
            if correct:
                m.canary_correct.labels(*labels, condition).inc()
        if probe.correct_without and probe.correct_with:
            m.canary_both_correct.labels(*labels).inc()
        if probe.correct_without or probe.correct_with:
            m.canary_either_correct.labels(*labels).inc()
        if not probe.correct_without:
            return
        not_followed = relevant and not followed_or_not(probe.followed)
        if not probe.correct_with:
            m.canary_broken.labels(*labels).inc()
        if not_followed:
            m.canary_not_followed.labels(*labels).inc()
        if not probe.correct_with or not_followed:
            m.canary_not_robust.labels(*labels).inc()

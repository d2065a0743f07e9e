"""The benchmark runner (`perg-proxy eval run`).

For each item: the no-preference baseline answer, then every strategy × setting answer, each
through the proxy's own pipeline (`answering`); the option letter of every answer (`extract`,
with the optional LLM fallback); and for the relevant and mixed settings the follow judge, which
sees the question, the relevant preference, and the answers without and with preferences. Items
run concurrently (`concurrency` at a time), calls at temperature 0 with a fixed seed. How a
question is asked, and what each strategy sends, is the `protocol`'s (`proxy` or `paper`).

Every outcome worth keeping goes into the response cache at once, so a re-run after an
interruption makes no call it already made. A call that fails is retried (transient failures
only, `attempts` in all, by the proxy's own client and retry policy), then recorded in the case's `errors` and the run goes on: a case without
its answers stays out of the metrics and is counted in the report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..errors import CallFailed, describe_error
from ..perg.datasets import Item, PreferenceItem
from ..perg.extract import Extraction, extract_answer
from .answering import BASELINE, BASELINE_STRATEGY, Answer, Answerer, EvalStrategy, parse_strategy
from .baselines import Baselines
from .cache import CacheKey, ResponseCache, fingerprint
from .judging import Judging, LetterExtractor
from .options import RunOptions
from .progress import Progress
from .protocols import Protocol
from .results import CaseResult
from .suite import Unit

REPLY_FAILURES = ("unparseable", "invalid_verdict")
"""Failures that are the model's own reply (not a verdict): final, and cached like a verdict."""


def total_answers(units: Sequence[Unit], strategies: int) -> int:
    """Answers a run asks for: each item's baseline, and one per strategy and case."""
    return sum(1 + strategies * len(unit.cases) for unit in units)


@dataclass(slots=True)
class RunStats:
    """What the run did, for the report: calls made and cached, time per answer, aligner outcomes."""

    answers_new: int = 0
    answers_cached: int = 0
    answers_failed: int = 0
    fallback_letters: int = 0
    hedge_letters: int = 0
    drafts_compared: int = 0
    drafts_differ: int = 0
    seconds: dict[str, list[float]] = field(default_factory=dict)


class Runner:
    def __init__(
        self,
        options: RunOptions,
        cache: ResponseCache,
        answerer: Answerer,
        judging: Judging,
        baselines: Baselines,
        extractor: LetterExtractor | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.options = options
        self.cache = cache
        self.answerer = answerer
        self.judging = judging
        self.baselines = baselines
        self.protocol: Protocol = baselines.protocol
        self.extractor = extractor
        self.progress = progress or Progress(0, "", enabled=False)
        self.strategies = [parse_strategy(name, options.protocol) for name in options.strategies]
        self.stats = RunStats()
        self._gate = asyncio.Semaphore(options.concurrency)

    async def run(self, units: Sequence[Unit]) -> list[CaseResult]:
        """Every case of every unit, in unit order, then strategy, then setting."""

        async def guarded(unit: Unit) -> list[CaseResult]:
            async with self._gate:
                return await self.unit(unit)

        nested = await asyncio.gather(*(guarded(unit) for unit in units))
        return [result for results in nested for result in results]

    async def unit(self, unit: Unit) -> list[CaseResult]:
        errors: dict[str, str] = {}
        baseline = await self.answer(unit.item, "none", BASELINE_STRATEGY, (), errors, "baseline")
        nopref = None
        if baseline is not None:
            nopref = await self.letter(unit.item, "none", BASELINE, baseline.text, errors, "baseline_extract")
        return [await self.case(unit, case, strategy, baseline, nopref, errors) for strategy in self.strategies for case in unit.cases]

    async def case(
        self,
        unit: Unit,
        case: PreferenceItem,
        strategy: EvalStrategy,
        baseline: Answer | None,
        nopref: Extraction | None,
        base_errors: dict[str, str],
    ) -> CaseResult:
        item, errors = unit.item, dict(base_errors)
        fields: dict[str, Any] = {
            "item_id": item.id, "source": item.source, "category": item.category, "setting": case.setting,
            "strategy": strategy.name, "relevant": case.relevant, "question": item.question, "options": item.options,
            "gold": item.gold, "preferences": case.preferences, "judged_preferences": unit.judged_preferences(case),
            "preference_category": case.preference_category,
        }  # fmt: skip
        if baseline is None or nopref is None:
            errors["answer"] = "not asked: the baseline answer failed"
            self.progress.advance(failed=1)
            return CaseResult(**fields, errors=errors)
        fields.update(nopref_answer=baseline.text, nopref_letter=nopref.letter, nopref_extraction=nopref.method)
        answer = await self.answer(item, case.setting, strategy, case.preferences, errors, "answer", baseline.text)
        if answer is None:
            return CaseResult(**fields, errors=errors)
        self._compare_draft(answer, baseline)
        pref = await self.letter(item, case.setting, strategy.name, answer.text, errors, "extract")
        fields.update(
            pref_answer=answer.text,
            pref_letter=pref.letter,
            pref_extraction=pref.method,
            aligned=answer.aligned,
            fallback_reason=answer.reason,
        )
        if case.relevant:
            verdict = await self.follow(unit, case, strategy, baseline.text, answer.text, errors)
            if verdict is not None:
                fields.update(follow_score=verdict["score"], follow_reason=verdict.get("reason", ""))
        return CaseResult(**fields, errors=errors)

    def body(self, item: Item) -> dict[str, Any]:
        """The request a client would send, as the protocol writes it: the MCQ prompt (and the
        paper's system prompt), temperature 0, the protocol's seed and token cap."""
        return self.protocol.body(item, self.options.model)

    async def answer(
        self,
        item: Item,
        setting: str,
        strategy: EvalStrategy,
        preferences: tuple[str, ...],
        errors: dict[str, str],
        label: str,
        baseline: str = "",
    ) -> Answer | None:
        """A strategy's answer, from the cache or through the pipeline; None (error recorded) on failure."""
        body = self.body(item)
        prompted = strategy.pipeline in ("prompted", "paper_aligner")
        extra = (self.baselines.inputs(item, strategy), baseline if strategy.pipeline == "paper_aligner" else "") if prompted else ()
        key = CacheKey(
            kind="answer", item_id=item.id, setting=setting, strategy=strategy.name, model=self.options.model,
            prompt_version=self.answerer.prompt_version(strategy),
            inputs=fingerprint(body, preferences, self.options.structured_output, *extra),
        )  # fmt: skip
        cached = self.cache.get(key)
        if cached is not None:
            self.stats.answers_cached += 1
            self.stats.seconds.setdefault(strategy.name, []).append(float(cached.get("seconds", 0.0)))
            self.progress.advance(cached=1)
            return Answer.from_json(cached)
        request_id = f"perg-eval:{item.id}:{setting}:{strategy.name}"
        started = time.perf_counter()
        try:
            answer = await self._produce(request_id, body, item, strategy, preferences, baseline)
        except Exception as error:  # noqa: BLE001 - one failed case never aborts the run
            errors[label] = describe_error(error)
            self.stats.answers_failed += 1
            self.progress.advance(failed=1)
            return None
        seconds = time.perf_counter() - started
        self.cache.put(key, {**answer.to_json(), "seconds": seconds})
        self.stats.answers_new += 1
        self.stats.seconds.setdefault(strategy.name, []).append(seconds)
        self.progress.advance()
        return answer

    async def _produce(
        self, request_id: str, body: dict[str, Any], item: Item, strategy: EvalStrategy, preferences: tuple[str, ...], baseline: str
    ) -> Answer:
        if strategy.pipeline in ("prompted", "paper_aligner"):
            return await self.baselines.answer(request_id, body, item, strategy, preferences, baseline)
        return await self.answerer.answer(request_id, body, strategy, preferences)

    async def letter(self, item: Item, setting: str, strategy: str, text: str, errors: dict[str, str], label: str) -> Extraction:
        """The letter an answer commits to: the rules, the LLM, or the rules then the LLM (`--extractor`)."""
        fallback = partial(self._fallback_letter, item, setting, strategy, errors, label) if self.extractor else None
        try:
            extraction = await extract_answer(text, item.options, fallback, self.options.extractor, self.options.hedges)
        except Exception as error:  # noqa: BLE001 - a failed fallback leaves the answer unextractable
            errors[label] = describe_error(error)
            return Extraction(letter=None, method="none")
        self.stats.fallback_letters += extraction.method == "fallback"
        self.stats.hedge_letters += extraction.method == "hedge"
        return extraction

    async def _fallback_letter(
        self, item: Item, setting: str, strategy: str, errors: dict[str, str], label: str, text: str, options: Sequence[str]
    ) -> str | None:
        assert self.extractor is not None
        key = CacheKey(
            kind="extract", item_id=item.id, setting=setting, strategy=strategy, model=self.extractor.model,
            prompt_version=self.extractor.version, inputs=fingerprint(text, self.extractor.style, self.protocol.question(item)),
        )  # fmt: skip
        cached = self.cache.get(key)
        if cached is not None:
            return cached["letter"]
        try:
            letter = await self.extractor.letter(self.protocol.question(item), text, options)
        except CallFailed as error:
            if error.reason not in REPLY_FAILURES:
                raise
            errors[label] = describe_error(error)
            letter = None
        self.cache.put(key, {"letter": letter})
        return letter

    async def follow(
        self, unit: Unit, case: PreferenceItem, strategy: EvalStrategy, without: str, with_: str, errors: dict[str, str]
    ) -> dict[str, Any] | None:
        """The follow verdict `{"score", "reason"}`; None (error recorded) when the judge failed."""
        query, preferences = self.protocol.question(unit.item), unit.judged_preferences(case)
        o = self.options
        key = CacheKey(
            kind="follow", item_id=unit.item.id, setting=case.setting, strategy=strategy.name, model=o.judge_model_name,
            prompt_version=self.judging.version("follow"),
            inputs=fingerprint(query, preferences, without, with_, o.judge_style, o.judge_max_tokens),
        )  # fmt: skip
        cached = self.cache.get(key)
        if cached is None:
            try:
                verdict = await self.judging.follow(query, preferences, without, with_)
                cached = {"score": verdict.score, "reason": verdict.reason}
            except Exception as error:  # noqa: BLE001 - a judge failure is recorded, never a score
                errors["follow"] = describe_error(error)
                if isinstance(error, CallFailed) and error.reason in REPLY_FAILURES:
                    self.cache.put(key, {"failed": errors["follow"]})
                return None
            self.cache.put(key, cached)
        if "score" not in cached:
            errors["follow"] = cached.get("failed", "judge failed")
            return None
        return cached

    def _compare_draft(self, answer: Answer, baseline: Answer) -> None:
        """Pref-Aligner's stage 1 is the baseline request again: at temperature 0 with a seed the
        draft should equal the baseline answer; how often it does not shows decoding noise."""
        if answer.draft is not None:
            self.stats.drafts_compared += 1
            self.stats.drafts_differ += answer.draft != baseline.text

"""`run_benchmark`: one whole run, from options to the report files in `options.out`:
`report.md`, `report.json`, the PNG charts, `results.jsonl`, `results/<strategy>-<setting>.csv`,
and the response cache (`cache.sqlite` unless told otherwise)."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..config import UpstreamSettings
from ..perg.datasets import LoadSummary
from .answering import BASELINE, Answerer, parse_strategy
from .baselines import Baselines, load_icl_examples
from .cache import ResponseCache
from .judging import Judging, LetterExtractor
from .options import RunOptions, eval_upstream
from .progress import Progress, duration
from .protocols import Protocol
from .report import ReportFiles, write_report
from .results import CaseResult, write_results
from .runner import Runner, RunStats, total_answers
from .suite import Unit, dataset_name, load_units
from .summary import Summary, summarize


@dataclass(frozen=True, slots=True)
class BenchmarkRun:
    results: list[CaseResult]
    summary: Summary
    report: ReportFiles
    files: list[Path]
    stats: RunStats
    seconds: float
    n_items: int
    protocol: str


def upstream_settings(options: RunOptions) -> UpstreamSettings:
    """The answering server as the pipeline sees it, with the benchmark's retries."""
    return eval_upstream(
        "eval", options.base_url, options.api_key, timeout=options.timeout, attempts=options.attempts,
        backoff_seconds=options.backoff_seconds, connections=max(8, 4 * options.concurrency), style=options.structured_output,
    )  # fmt: skip


def protocol_of(options: RunOptions) -> Protocol:
    return Protocol.create(options.protocol, max_tokens=options.max_tokens, seed=options.seed)


def load_suite(options: RunOptions, summaries: list[LoadSummary] | None = None) -> list[Unit]:
    """The items and cases of a run; a bad pool, or a dataset with no usable row (with `strict`:
    any bad row), raises (DatasetError lists every bad line); skipped rows go into `summaries`."""
    irrelevant = protocol_of(options).irrelevant
    return load_units(
        options.dataset, options.settings, preferences=options.preferences, seed=options.seed,
        n_unrelated=options.n_unrelated, limit=options.limit, irrelevant=irrelevant, strict=options.strict, summaries=summaries,
    )  # fmt: skip


async def run_benchmark(
    options: RunOptions,
    *,
    units: list[Unit] | None = None,
    summaries: list[LoadSummary] | None = None,
    progress: bool = True,
    stream: TextIO | None = None,
) -> BenchmarkRun:
    """Run every case (of `units`, else of `load_suite(options)`) and write the report."""
    summaries = [] if summaries is None else summaries
    units = load_suite(options, summaries) if units is None else units
    started = time.monotonic()
    protocol = protocol_of(options)
    answerer = Answerer(upstream_settings(options), options.timeout)
    judging = Judging(
        options.judge_url, options.judge_key, options.judge_model_name, options.judge_style,
        max_tokens=options.judge_max_tokens, timeout=options.timeout, follow_prompt=protocol.follow_prompt,
        attempts=options.attempts, backoff_seconds=options.backoff_seconds,
    )  # fmt: skip
    baselines = Baselines(answerer, protocol, load_icl_examples(options.icl_examples), options.structured_output)
    extractor = None
    if options.extractor != "rules":  # the judges' server and model read the letters, as in the paper
        extractor = LetterExtractor(
            options.judge_url, options.judge_key, options.judge_model_name, options.judge_style, timeout=options.timeout,
            attempts=options.attempts, backoff_seconds=options.backoff_seconds,
        )  # fmt: skip
    bar = Progress(total_answers(units, len(options.strategies)), "answers", stream=stream, enabled=progress)
    cache = ResponseCache(options.cache_path)
    runner = Runner(options, cache, answerer, judging, baselines, extractor, bar)
    try:
        await answerer.start()
        await judging.start()
        if extractor is not None:
            await extractor.start()
        results = await runner.run(units)
    finally:
        bar.close()
        cache.close()
        await answerer.close()
        await judging.close()
        if extractor is not None:
            await extractor.close()
    seconds = time.monotonic() - started
    records = [record for record in (r.record(options.follow_threshold) for r in results) if record is not None]
    summary = summarize(records, resamples=options.resamples, seed=options.seed)
    meta = describe_run(options, units, results, runner, seconds, summaries)
    report = write_report(summary, options.out, title=options.title, meta=meta)
    files = write_results(results, options.out)
    return BenchmarkRun(results, summary, report, files, runner.stats, seconds, len(units), protocol.description)


def describe_run(
    options: RunOptions,
    units: Sequence[Unit],
    results: Sequence[CaseResult],
    runner: Runner,
    seconds: float,
    summaries: Sequence[LoadSummary] = (),
) -> dict[str, str]:
    """The report's header lines: what was run, on what, and what happened along the way."""
    stats, o, protocol = runner.stats, options, runner.protocol
    answered = sum(r.answered for r in results)
    unjudged = sum(r.answered and r.relevant and r.follow_score is None for r in results)
    versions = [f"{name} {runner.answerer.prompt_version(parse_strategy(name, o.protocol))}" for name in o.strategies]
    limit = f", {len(units)} chosen with --limit and seed {o.seed}" if o.limit else ""
    skipped = "".join(f"; {s.name}: {s.loaded} of {s.rows} rows loaded, {len(s.skipped)} skipped" for s in summaries)
    meta = {
        "protocol": protocol.description,
        "model": f"`{o.model}` at {o.base_url} (structured output: {o.structured_output})",
        "judge": f"`{o.judge_model_name}` at {o.judge_url}, verdicts capped at {o.judge_max_tokens} tokens; "
        f"followed means a follow score of at least {o.follow_threshold}",
        "dataset": f"{dataset_name(o.dataset)}: {len(units)} items{limit}{skipped}",
        "settings": ", ".join(o.settings),
        "strategies": ", ".join(o.strategies),
        "generation": f"temperature 0, seed {protocol.generation_seed}, max_tokens {protocol.answer_tokens}"
        + (f" ({protocol.rewrite_tokens} for a rewrite)" if protocol.rewrite_tokens != protocol.answer_tokens else ""),
        "prompt versions": "; ".join([*versions, f"protocol {protocol.version()}", f"follow judge {runner.judging.version('follow')}"]),
        "cases": f"{answered} of {len(results)} answered" + _failed(len(results) - answered),
        "answer extraction": _extraction(o.extractor, stats.fallback_letters) + _hedges(o.hedges, stats.hedge_letters),
        "follow verdicts missing": f"{unjudged} (a relevant case without a verdict is not followed, the paper's rule; "
        "counted here and in the `verdict missing` column)",
    }
    outcomes = _aligner_outcomes(results)
    if outcomes:
        meta["Pref-Aligner outcomes"] = outcomes
        meta["Pref-Aligner fallbacks by reason"] = _fallback_reasons(results)
    if stats.drafts_compared:
        equal = stats.drafts_compared - stats.drafts_differ
        meta["stage-1 drafts equal to the baseline answer"] = f"{equal} of {stats.drafts_compared}"
    meta["mean seconds per answer"] = _timings(stats, [BASELINE, *o.strategies])
    meta["this invocation"] = (
        f"{stats.answers_new} answers asked, {stats.answers_cached} from the cache, {duration(seconds)}, concurrency {o.concurrency}"
    )
    meta["command"] = f"`{o.command_line()}`"
    if o.note:
        meta["note"] = o.note
    return meta


def _extraction(mode: str, found: int) -> str:
    letters = f"{found} letter{'s' if found != 1 else ''} read by it"
    if mode == "rules":
        return "the deterministic rules only (an unreadable answer counts as wrong)"
    if mode == "llm":
        return f"the LLM on the judge's server for every answer, as in the paper ({letters})"
    return f"the rules, then the LLM on the judge's server where they found none ({letters})"


def _hedges(policy: str, resolved: int) -> str:
    if policy == "none":
        return "; a hedge (an answer naming several options) is unreadable"
    return f"; a hedge reads as the first of its options the answer mentions, as the paper's reader mostly does ({resolved} resolved so)"


def _failed(count: int) -> str:
    return f"; {count} failed after retries and are left out of the metrics (see results.jsonl)" if count else ""


def _aligner_outcomes(results: Sequence[CaseResult]) -> str:
    """`x-perg-aligned` values per Pref-Aligner strategy: true (rewritten), skipped (gate: nothing
    relevant, or the rewrite said UNCHANGED), fallback (the rewrite failed; the draft was served)."""
    by_strategy: dict[str, Counter[str]] = {}
    for result in results:
        if result.aligned is not None:
            by_strategy.setdefault(result.strategy, Counter())[result.aligned] += 1
    return "; ".join(
        f"{strategy}: " + ", ".join(f"{value} {count}" for value, count in sorted(counts.items()))
        for strategy, counts in by_strategy.items()
    )


def _fallback_reasons(results: Sequence[CaseResult]) -> str:
    """Per Pref-Aligner strategy: the share of answered cases that served the draft, and why."""
    answered: Counter[str] = Counter()
    reasons: dict[str, Counter[str]] = {}
    for result in results:
        if result.aligned is not None:
            answered[result.strategy] += 1
            counts = reasons.setdefault(result.strategy, Counter())
            if result.aligned == "fallback":
                counts[result.fallback_reason or "unknown"] += 1
    parts = []
    for strategy, total in answered.items():
        counts = reasons[strategy]
        detail = ", ".join(f"{reason} {count} ({100 * count / total:.1f}%)" for reason, count in counts.most_common())
        parts.append(f"{strategy}: {100 * sum(counts.values()) / total:.1f}% of {total}" + (f" ({detail})" if detail else ""))
    return "; ".join(parts)


def _timings(stats: RunStats, names: Sequence[str]) -> str:
    parts = [f"{name} {statistics.fmean(stats.seconds[name]):.2f}" for name in names if stats.seconds.get(name)]
    return ", ".join(parts) + " (wall time per answer, retries and queueing included)" if parts else "n/a"

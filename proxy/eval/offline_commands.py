"""The `eval` subcommands that read files: `metrics` (re-score a results CSV), `dataset` (load a
dataset and say what was skipped) and `judge` (calibrate the judges on labelled samples).

`eval judge` without `--labels` uses the 58 *reference labels* shipped with the project: written
for it by its authors, not collected from human annotators, and said so wherever they are used.
`--labels FILE` takes your own human labels (same JSONL layout); `--from-store` the labels operators
recorded on the monitor's stored samples (`stored_labels.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import LoggingSettings
from ..errors import describe_error
from ..perg.datasets import SETTINGS, DatasetError, load_jsonl, load_pergdata_csv
from ..perg.extract import EXTRACTOR_MODES
from ..perg.hedges import DEFAULT_HEDGES, HEDGE_POLICIES

RATE_KEYS = ("breakage_rate", "alignment_failure_rate", "robustness_error_rate", "performance_variation")
_READ_BY = {"rule": "by the rules", "fallback": "by the LLM", "hedge": "hedges resolved to their first option", "none": "unreadable"}
REFERENCE_LABELS = "the reference labels written for this project (proxy/perg/data/judge_labels.jsonl; not human annotations)"


def fail(command: str, message: str, code: int = 2) -> int:
    print(f"perg-proxy eval {command}: {message}", file=sys.stderr)
    return code


def configure(args: argparse.Namespace) -> None:
    from ..logs import configure_logging, current_stderr

    configure_logging(LoggingSettings(level=args.log_level, format="console"), stream=current_stderr())


def add_metrics(sub: argparse._SubParsersAction, add_server: Callable[..., None], add_common: Callable[..., None]) -> None:
    p = sub.add_parser(
        "metrics", help="PERG rates of a results CSV (every layout of the paper's files)", description="Re-score a results CSV."
    )
    p.add_argument("--results", required=True, help="CSV with question, options, gold_option, the answer letters or raw answers")
    p.add_argument("--setting", choices=SETTINGS, default="relevant", help="irrelevant: Robust = Acc (default: %(default)s)")
    p.add_argument("--follow-threshold", type=int, default=3, help="a pref_eval_rating of at least this is followed (default: %(default)s)")
    p.add_argument(
        "--answers", choices=("auto", "letters", "raw"), default="auto",
        help="read the letter columns (strictly) or the raw answers with the extractor; auto: letters when there are (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--pref-column", help="the column of answers with preferences (default: aligner_answer, pref_ans, pref_answer …)")
    p.add_argument(
        "--extractor", choices=EXTRACTOR_MODES, default="rules",
        help="how raw answers are read: the rules, the model of --base-url (the paper's way), or the rules then the model "
        "where they find none (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--hedges", choices=HEDGE_POLICIES, default=DEFAULT_HEDGES,
        help="an answer naming several options: none (unreadable, counted as wrong) or first (the first of them it "
        "mentions, as the paper's reader mostly does; a guess) (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--strict", action="store_true", help="refuse the file if any row cannot be used, instead of skipping it")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--per-row", action="store_true", help="also list the letters used for each row")
    add_server(p, "LLM reader (--extractor llm or rules+llm)")
    add_common(p)
    p.set_defaults(run_eval=metrics_command)


def add_dataset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="load a dataset as eval run would, and list the rows it skips", description="Check a dataset.")
    p.add_argument("path", help="a CSV in the PERGData layout or a JSONL file in the shared-data schema")
    p.add_argument("--strict", action="store_true", help="refuse the file if any row cannot be used")
    p.set_defaults(run_eval=dataset_command)


def add_judge(sub: argparse._SubParsersAction, add_server: Callable[..., None], add_common: Callable[..., None], max_tokens: int) -> None:
    p = sub.add_parser(
        "judge", help="agreement of the judges with labelled samples", description="Calibrate the follow and consistency judges."
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--labels", help="your own human labels, JSONL (default: the reference labels written for this project)")
    source.add_argument("--from-store", action="store_true", help="the labels recorded on the monitor's samples in the store of --config")
    p.add_argument("--config", help="with --from-store: the proxy's configuration file (default: $PERG_CONFIG)")
    add_server(p, "judge")
    p.add_argument("--max-tokens", type=int, default=max_tokens, help="token cap of a verdict (default: %(default)s)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the κ intervals (default: %(default)s)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--out", help="also write calibration.md and calibration.json here")
    add_common(p)
    p.set_defaults(run_eval=judge_command)


def metrics_command(args: argparse.Namespace) -> int:
    from .rescore import find_columns, rescore

    scoring = {
        "setting": args.setting, "per_row": args.per_row, "threshold": args.follow_threshold, "answers": args.answers,
        "pref_column": args.pref_column, "strict": args.strict, "hedges": args.hedges,
    }  # fmt: skip
    try:
        if args.extractor == "rules":
            result = rescore(args.results, **scoring)
            if "extraction" in result:
                result["extraction"]["extractor"] = "rules"
        elif find_columns(args.results, args.answers, args.pref_column).letters:
            return fail(
                "metrics",
                f"--extractor {args.extractor} reads raw answers, and this file's letter columns are read as letters: add --answers raw",
            )
        elif args.concurrency < 1 or args.attempts < 1 or args.timeout <= 0:
            return fail("metrics", "--concurrency and --attempts must be at least 1, --timeout positive")
        else:
            configure(args)
            result = asyncio.run(_rescore_with_llm(args, scoring))
    except (OSError, ValueError) as error:  # DatasetError is a ValueError listing every bad line
        return fail("metrics", str(error))
    except KeyboardInterrupt:
        return fail("metrics", "interrupted", 130)
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        print(render_rates(result, args.results, args.setting))
    return 0


async def _rescore_with_llm(args: argparse.Namespace, scoring: dict[str, Any]) -> dict[str, Any]:
    """`rescore` with the raw answers read by the rules then the LLM (or the LLM alone), as `eval
    run --extractor` reads them: one pass finds the answers, the LLM reads them (each distinct one
    once, `--concurrency` at a time), a second pass scores them."""
    from ..perg.extract import Extraction, extract_answer
    from .judging import LetterExtractor
    from .progress import Progress
    from .rescore import rescore

    answers: dict[tuple[str, tuple[str, ...], str], Extraction] = {}
    none = Extraction(letter=None, method="none")
    rescore(args.results, **scoring, read_raw=lambda text, options, question: answers.setdefault((text, tuple(options), question), none))
    extractor = LetterExtractor(
        args.base_url.rstrip("/"), args.api_key, args.model, args.structured_output, timeout=args.timeout, attempts=args.attempts
    )
    gate = asyncio.Semaphore(args.concurrency)
    failures: list[str] = []
    bar = Progress(len(answers), "answers", enabled=not args.quiet)

    async def read(key: tuple[str, tuple[str, ...], str]) -> None:
        text, options, question = key
        async with gate:
            try:
                answers[key] = await extract_answer(
                    text, options, lambda reply, shown: extractor.letter(question, reply, shown), args.extractor, args.hedges
                )
            except Exception as error:  # noqa: BLE001 - a failed read leaves the answer unreadable, counted
                failures.append(f"{question[:60]!r}: {describe_error(error)}")
                bar.advance(failed=1)
                return
        bar.advance()

    await extractor.start()
    try:
        await asyncio.gather(*(read(key) for key in list(answers)))
    finally:
        bar.close()
        await extractor.close()
    result = rescore(args.results, **scoring, read_raw=lambda text, options, question: answers[(text, tuple(options), question)])
    result["extraction"] |= {"extractor": args.extractor, "model": args.model, "failures": failures}
    return result


def render_rates(result: dict[str, Any], path: str, setting: str) -> str:
    from ..perg.datasets import LoadSummary
    from .report import percent, table

    columns = result["columns"]
    lines = [
        f"{path} ({setting} setting): {result['n_cases']} cases; Q* = {result['n_q_star']} answered correctly without preferences",
        f"letters: {columns['without']} / {', '.join(columns['with'])}, read as {columns['read_as']}"
        + (f"; follow: {columns['follow']}" if columns["follow"] else ""),
        LoadSummary(**result["load"]).render(limit=10),
        "",
    ]
    rows = [[key, percent(result[key])] for key in RATE_KEYS if key in result]
    rows.append(["breakage_rate over readable answers", f"{percent(result['breakage_rate_readable'])} (Q* {result['n_q_star_readable']})"])
    rows.append(["unreadable without / with preferences", f"{percent(result['unreadable_nopref'])} / {percent(result['unreadable_pref'])}"])
    if "extraction" in result:
        read = result["extraction"]
        counts = ", ".join(f"{n} {_READ_BY[method]}" for method, n in read["answers_by"].items())
        rows.append(["raw answers read", f"{read['extractor']}, hedges {read['hedges']}: {counts}"])
    if "agreement_with_letters" in result:
        agreed = result["agreement_with_letters"]
        named = f"{agreed['columns']['without']} / {', '.join(agreed['columns']['with'])}"
        rows.append([
            f"agreement with the file's letters ({named})",
            f"{percent(agreed['without'])} / {percent(agreed['with'])}, both {percent(agreed['both'])}"
            f" ({agreed['answers']['without']} / {agreed['answers']['with']} answers with a valid letter)",
        ])  # fmt: skip
    if columns["follow"]:
        rows.append(["follow verdict missing (counted as not followed)", str(result["n_follow_missing"])])
    lines += table(["metric", "value"], rows)
    for profile, rates in result.get("profiles", {}).items():
        lines.append(
            f"profile {profile}: Q* {rates['n_q_star']}, " + ", ".join(f"{k} {percent(rates[k])}" for k in RATE_KEYS if k in rates)
        )
    if "rows" in result:
        cells = [[str(r["line"]), r["gold"], r["nopref"] or "-", r["pref"] or "-", _verdict(r["followed"])] for r in result["rows"]]
        lines += ["", *table(["line", "gold", "no pref", "pref", "followed"], cells)]
    return "\n".join(lines)


def _verdict(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def dataset_command(args: argparse.Namespace) -> int:
    try:
        if args.path.lower().endswith(".csv"):
            summary = load_pergdata_csv(args.path, strict=args.strict).summary
        else:
            summary = load_jsonl(args.path, strict=args.strict).summary
    except (OSError, ValueError) as error:
        return fail("dataset", str(error))
    print(summary.render(limit=50))
    return 0


def judge_command(args: argparse.Namespace) -> int:
    from .calibration import load_judge_labels
    from .stored_labels import StoredLabelsError, labels_from_store

    try:
        if args.from_store:
            labels, args.source, skipped = labels_from_store(args.config)
            for line in skipped:
                print(f"perg-proxy eval judge: {line}", file=sys.stderr)
        else:
            labels = load_judge_labels(args.labels)
            args.source = f"your labels in {args.labels}" if args.labels else REFERENCE_LABELS
    except (DatasetError, OSError) as error:
        return fail("judge", str(error))
    except StoredLabelsError as error:
        return fail("judge", str(error), error.code)
    if args.concurrency < 1 or args.attempts < 1 or args.timeout <= 0 or args.resamples < 0:
        return fail("judge", "--concurrency and --attempts must be at least 1, --timeout positive, --resamples at least 0")
    configure(args)
    try:
        calibration, failures = asyncio.run(_calibrate(args, labels))
    except KeyboardInterrupt:
        return fail("judge", "interrupted", 130)
    return _print_calibration(args, labels, calibration, failures)


async def _calibrate(args: argparse.Namespace, labels: list[Any]) -> tuple[Any, list[str]]:
    from .calibration import calibrate
    from .judging import Judging, judge_labels
    from .progress import Progress

    judging = Judging(
        args.base_url.rstrip("/"), args.api_key, args.model, args.structured_output,
        max_tokens=args.max_tokens, timeout=args.timeout, attempts=args.attempts,
    )  # fmt: skip
    bar = Progress(len(labels), "labels", enabled=not args.quiet)
    try:
        await judging.start()
        scores, verdicts, failures = await judge_labels(judging, labels, concurrency=args.concurrency, on_done=bar.advance)
    finally:
        bar.close()
        await judging.close()
    return calibrate(labels, scores, verdicts, resamples=args.resamples), failures


def _print_calibration(args: argparse.Namespace, labels: list[Any], calibration: Any, failures: list[str]) -> int:
    from .report import render_calibration

    source, reference = args.source, args.source == REFERENCE_LABELS
    title = f"Judge calibration: {args.model} on {len(labels)} samples"
    markdown = render_calibration(calibration, title=title, labels=source, reference=reference)
    if failures:
        markdown += "\nJudge failures:\n\n" + "\n".join(f"- {line}" for line in failures) + "\n"
    stored: list[dict[str, Any]] | None = None
    if getattr(args, "from_store", False):
        from .stored_labels import render_stored_agreement, stored_agreement

        stored = stored_agreement(args.config)
        markdown += render_stored_agreement(stored)
    document = {
        "title": title, "model": args.model, "base_url": args.base_url, "labels": source,
        "reference_labels": reference, "failures": failures, **calibration.model_dump(mode="json"),
        "stored_verdicts_agreement": stored,
    }  # fmt: skip
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "calibration.md").write_text(markdown, encoding="utf-8")
        (out / "calibration.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(document, indent=2) if args.format == "json" else markdown, end="" if args.format == "text" else "\n")
    return 0 if calibration.follow.n or calibration.consistency.n else 1

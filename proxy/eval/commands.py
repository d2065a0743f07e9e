"""`perg-proxy eval`: the offline PERG benchmark's command line.

- `eval run`: the benchmark against any OpenAI-compatible server (report, results, cache in `--out`);
- `eval metrics --results FILE.csv`: the four PERG rates of a results CSV in the paper's layout;
- `eval judge [--labels FILE.jsonl]`: the judges' agreement with human labels (Cohen's κ).

Each subcommand sets `run_eval` on the parsed namespace; `proxy.cli.main` calls it. Exit codes:
0 done, 1 nothing could be measured, 2 bad input, 130 interrupted (re-run to resume).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, get_args

from pydantic import ValidationError

from ..config import LoggingSettings, StructuredOutput
from ..perg.datasets import SETTINGS, DatasetError, describe
from .options import RunOptions

STYLES = get_args(StructuredOutput)
RATE_KEYS = ("breakage_rate", "alignment_failure_rate", "robustness_error_rate", "performance_variation")


def add_eval_command(commands: argparse._SubParsersAction) -> None:
    """Register `perg-proxy eval` and its subcommands; each sets `run_eval` on the namespace."""
    parser = commands.add_parser("eval", help="offline PERG benchmark", description="Offline PERG benchmark.")
    sub = parser.add_subparsers(dest="eval_command", required=True, metavar="{run,metrics,judge}")
    _add_run(sub)
    _add_metrics(sub)
    _add_judge(sub)


def _default(name: str) -> Any:
    return RunOptions.model_fields[name].default


def _csv_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _add_server(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--base-url", default=_default("base_url"), help=f"OpenAI-compatible base URL of the {what} (default: %(default)s)")
    parser.add_argument("--api-key", default="", help="its API key (default: none)")
    parser.add_argument("--model", default=_default("model"), help=f"the {what}'s model name (default: %(default)s)")
    parser.add_argument(
        "--structured-output", choices=STYLES, default=_default("structured_output"),
        help="how the server is asked for JSON: json_schema (OpenAI), json_object_schema (llama_cpp.server), json_object, none (default: %(default)s)",
    )  # fmt: skip


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--concurrency", type=int, default=_default("concurrency"), help="items (or labels) in flight (default: %(default)s)"
    )
    parser.add_argument(
        "--attempts", type=int, default=_default("attempts"), help="tries per call on transient errors (default: %(default)s)"
    )
    parser.add_argument("--timeout", type=float, default=_default("timeout"), help="seconds per model call (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="error", help="log level on stderr (default: %(default)s)"
    )


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the benchmark and write the report", description="Run the PERG benchmark.")
    _add_server(p, "model under test")
    p.add_argument("--judge-base-url", help="server of the follow judge (default: --base-url)")
    p.add_argument("--judge-api-key", help="its API key (default: --api-key)")
    p.add_argument("--judge-model", help="the follow judge's model (default: --model)")
    p.add_argument("--judge-structured-output", choices=STYLES, help="the judge server's JSON style (default: --structured-output)")
    p.add_argument("--dataset", default="builtin", help="builtin, a JSONL file (shared-data schema) or a CSV (PERGData layout)")
    p.add_argument("--preferences", help="preference pool (preferences.json layout; default: the built-in pool)")
    p.add_argument("--settings", type=_csv_list, default=SETTINGS, help="comma-separated: relevant,irrelevant,mixed (default: all)")
    p.add_argument(
        "--strategies",
        type=_csv_list,
        default=_default("strategies"),
        help="comma-separated: naive, pref_aligner, pref_aligner_gate_off, pref_aligner_gate_aligner (default: naive,pref_aligner)",
    )
    p.add_argument("--limit", type=int, help="at most N items (a seeded choice; default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cases, the model calls and the bootstrap (default: %(default)s)")
    p.add_argument(
        "--n-unrelated",
        type=int,
        default=_default("n_unrelated"),
        help="unrelated preferences in the irrelevant and mixed settings (default: %(default)s)",
    )
    p.add_argument(
        "--max-tokens", type=int, default=_default("max_tokens"), help="token cap of every answer and rewrite (default: %(default)s)"
    )
    p.add_argument(
        "--judge-max-tokens", type=int, default=_default("judge_max_tokens"), help="token cap of a judge verdict (default: %(default)s)"
    )
    p.add_argument(
        "--follow-threshold",
        type=int,
        default=_default("follow_threshold"),
        help="a follow score of at least this is followed (default: %(default)s)",
    )
    p.add_argument("--llm-extract", action="store_true", help="ask the model for the letter when the rules find none")
    p.add_argument(
        "--resamples", type=int, default=_default("resamples"), help="bootstrap resamples of the intervals (default: %(default)s)"
    )
    p.add_argument("--out", default=str(_default("out")), help="output folder (default: %(default)s)")
    p.add_argument("--cache", help="response cache file (default: OUT/cache.sqlite)")
    p.add_argument("--title", default=_default("title"), help="report title")
    p.add_argument("--note", help="a line added to the report's header")
    _add_common(p)
    p.set_defaults(run_eval=run_command)


def _add_metrics(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("metrics", help="PERG rates of a results CSV in the paper's layout", description="Re-score a results CSV.")
    p.add_argument(
        "--results", required=True, help="CSV with question, options, gold_option, the answers or letters, optional follow column"
    )
    p.add_argument("--setting", choices=SETTINGS, default="relevant", help="irrelevant: Robust = Acc (default: %(default)s)")
    p.add_argument("--follow-threshold", type=int, default=3, help="a pref_eval_rating of at least this is followed (default: %(default)s)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--per-row", action="store_true", help="also list the letters used for each row")
    p.set_defaults(run_eval=metrics_command)


def _add_judge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "judge", help="agreement of the judges with human labels", description="Calibrate the follow and consistency judges."
    )
    p.add_argument("--labels", help="labelled samples, JSONL (default: the shipped judge_labels.jsonl)")
    _add_server(p, "judge")
    p.add_argument("--max-tokens", type=int, default=_default("judge_max_tokens"), help="token cap of a verdict (default: %(default)s)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--out", help="also write calibration.md and calibration.json here")
    _add_common(p)
    p.set_defaults(run_eval=judge_command)


def fail(command: str, message: str, code: int = 2) -> int:
    print(f"perg-proxy eval {command}: {message}", file=sys.stderr)
    return code


def configure(args: argparse.Namespace) -> None:
    from ..logs import configure_logging

    configure_logging(LoggingSettings(level=args.log_level, format="console"), stream=sys.stderr)


def run_command(args: argparse.Namespace) -> int:
    from .benchmark import load_suite, run_benchmark

    fields = {
        name: getattr(args, name)
        for name in RunOptions.model_fields
        if name not in ("backoff_seconds",) and getattr(args, name, None) is not None
    }
    try:
        options = RunOptions(**fields)
    except ValidationError as error:
        return fail("run", describe(error))
    try:
        units = load_suite(options)
    except (OSError, ValueError) as error:  # DatasetError is a ValueError listing every bad line
        return fail("run", str(error))
    configure(args)
    try:
        run = asyncio.run(run_benchmark(options, units=units, progress=not args.quiet))
    except KeyboardInterrupt:
        return fail("run", f"interrupted; finished answers are kept in {options.cache_path}: run the same command to resume", 130)
    print(render_overall(run))
    if not any(result.answered for result in run.results):
        return fail("run", "no case could be answered (see the errors in results.jsonl)", 1)
    return 0


def render_overall(run: Any) -> str:
    from .report import estimate_cell, table

    rows = [
        [g.strategy, g.setting, str(g.n_items), str(g.n_q_star)] + [estimate_cell(getattr(g, key)) for key in RATE_KEYS]
        for g in run.summary.overall()
    ]
    failed = sum(not result.answered for result in run.results)
    lines = table(["strategy", "setting", "n", "Q*", "BR", "AFR", "RER", "PVR"], rows)
    lines += ["", f"{run.n_items} items, {len(run.results)} cases, {failed} failed; report: {run.report.markdown}"]
    return "\n".join(lines)


def metrics_command(args: argparse.Namespace) -> int:
    from .rescore import rescore

    try:
        result = rescore(args.results, setting=args.setting, per_row=args.per_row, threshold=args.follow_threshold)
    except (OSError, ValueError) as error:  # DatasetError is a ValueError listing every bad line
        return fail("metrics", str(error))
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        print(render_rates(result, args.results, args.setting))
    return 0


def render_rates(result: dict[str, Any], path: str, setting: str) -> str:
    from .report import percent, table

    lines = [f"{path} ({setting} setting): Q* = {result['n_q_star']} rows answered correctly without preferences", ""]
    lines += table(["metric", "value"], [[key, percent(result[key])] for key in RATE_KEYS if key in result])
    if "rows" in result:
        cells = [[str(r["line"]), r["gold"], r["nopref"] or "-", r["pref"] or "-", _verdict(r["followed"])] for r in result["rows"]]
        lines += ["", *table(["line", "gold", "no pref", "pref", "followed"], cells)]
    return "\n".join(lines)


def _verdict(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def judge_command(args: argparse.Namespace) -> int:
    from .calibration import load_judge_labels

    try:
        labels = load_judge_labels(args.labels)
    except (DatasetError, OSError) as error:
        return fail("judge", str(error))
    if args.concurrency < 1 or args.attempts < 1 or args.timeout <= 0:
        return fail("judge", "--concurrency and --attempts must be at least 1, --timeout positive")
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
        args.base_url.rstrip("/"), args.api_key, args.model, args.structured_output, max_tokens=args.max_tokens, timeout=args.timeout
    )
    bar = Progress(len(labels), "labels", enabled=not args.quiet)
    try:
        scores, verdicts, failures = await judge_labels(
            judging, labels, concurrency=args.concurrency, attempts=args.attempts, on_done=bar.advance
        )
    finally:
        bar.close()
        await judging.close()
    return calibrate(labels, scores, verdicts), failures


def _print_calibration(args: argparse.Namespace, labels: list[Any], calibration: Any, failures: list[str]) -> int:
    from pathlib import Path

    from .report import render_calibration

    source = args.labels or "the shipped judge_labels.jsonl"
    title = f"Judge calibration: {args.model} on {source} ({len(labels)} samples)"
    markdown = render_calibration(calibration, title=title)
    if failures:
        markdown += "\nJudge failures:\n\n" + "\n".join(f"- {line}" for line in failures) + "\n"
    document = {"title": title, "model": args.model, "base_url": args.base_url, "failures": failures, **calibration.model_dump(mode="json")}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "calibration.md").write_text(markdown, encoding="utf-8")
        (out / "calibration.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(document, indent=2) if args.format == "json" else markdown, end="" if args.format == "text" else "\n")
    return 0 if calibration.follow.n or calibration.consistency.n else 1

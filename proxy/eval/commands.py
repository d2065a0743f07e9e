"""`perg-proxy eval`: the offline PERG benchmark's command line.

- `eval run`: the benchmark against any OpenAI-compatible server (report, results, cache in `--out`);
- `eval metrics --results FILE.csv`: the four PERG rates of a results CSV in any of the paper's layouts;
- `eval dataset FILE`: load a dataset as `eval run` would and say what was skipped;
- `eval judge [--labels FILE.jsonl]`: the judges' agreement (Cohen's κ with a bootstrap interval)
  with the reference labels written for this project, or with your own human labels.

Each subcommand sets `run_eval` on the parsed namespace; `proxy.cli.main` calls it. Exit codes:
0 done, 1 nothing could be measured, 2 bad input, 130 interrupted (re-run to resume).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, get_args

from pydantic import ValidationError

from ..config import StructuredOutput
from ..perg.datasets import SETTINGS, describe
from ..perg.extract import EXTRACTOR_MODES
from ..perg.hedges import HEDGE_POLICIES
from .offline_commands import add_dataset, add_judge, add_metrics, configure, fail
from .options import RunOptions
from .protocols import PROTOCOLS

STYLES = get_args(StructuredOutput)
RATE_KEYS = ("breakage_rate", "alignment_failure_rate", "robustness_error_rate", "performance_variation")


def add_eval_command(commands: argparse._SubParsersAction) -> None:
    """Register `perg-proxy eval` and its subcommands; each sets `run_eval` on the namespace."""
    parser = commands.add_parser("eval", help="offline PERG benchmark", description="Offline PERG benchmark.")
    sub = parser.add_subparsers(dest="eval_command", required=True, metavar="{run,metrics,dataset,judge}")
    _add_run(sub)
    add_metrics(sub, _add_server, _add_common)
    add_dataset(sub)
    add_judge(sub, _add_server, _add_common, _default("judge_max_tokens"))


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
    p.add_argument(
        "--protocol", choices=PROTOCOLS, default=_default("protocol"),
        help="proxy: this project's protocol; paper: the paper's, point by point (docs/eval.md) (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--dataset", default="builtin", help="builtin, a JSONL file (shared-data schema) or a CSV (PERGData layout)")
    p.add_argument("--strict", action="store_true", help="refuse a dataset with any bad row instead of skipping it")
    p.add_argument("--preferences", help="preference pool (preferences.json layout; default: the built-in pool)")
    p.add_argument("--icl-examples", help="few-shot examples of the icl strategy (icl_examples.json layout; default: the built-in set)")
    p.add_argument("--settings", type=_csv_list, default=SETTINGS, help="comma-separated: relevant,irrelevant,mixed (default: all)")
    p.add_argument(
        "--strategies",
        type=_csv_list,
        default=_default("strategies"),
        help="comma-separated: naive, pref_aligner, pref_aligner_guarded, pref_aligner_verified, pref_aligner_gate_off, "
        "pref_aligner_gate_aligner (proxy protocol), "
        "cot, icl, self_critic (default: naive,pref_aligner)",
    )
    p.add_argument("--limit", type=int, help="at most N items (a seeded choice; default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cases, the model calls and the bootstrap (default: %(default)s)")
    p.add_argument(
        "--n-unrelated",
        type=int,
        default=_default("n_unrelated"),
        help="unrelated preferences in the irrelevant and mixed settings (default: %(default)s)",
    )
    p.add_argument("--max-tokens", type=int, help="token cap of every answer (default: 128; 500 under --protocol paper)")
    p.add_argument(
        "--judge-max-tokens", type=int, default=_default("judge_max_tokens"), help="token cap of a judge verdict (default: %(default)s)"
    )
    p.add_argument(
        "--follow-threshold",
        type=int,
        default=_default("follow_threshold"),
        help="a follow score of at least this is followed (default: %(default)s)",
    )
    p.add_argument(
        "--extractor", choices=EXTRACTOR_MODES, default=_default("extractor"),
        help="how answer letters are read: the rules, the judge model (the paper's way), or the rules then the judge model "
        "where they find none (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--hedges", choices=HEDGE_POLICIES, default=_default("hedges"),
        help="an answer naming several options: none (unreadable, counted as wrong) or first (the first of them it "
        "mentions, as the paper's reader mostly does; a guess) (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--resamples", type=int, default=_default("resamples"), help="bootstrap resamples of the intervals (default: %(default)s)"
    )
    p.add_argument("--out", default=str(_default("out")), help="output folder (default: %(default)s)")
    p.add_argument("--cache", help="response cache file (default: OUT/cache.sqlite)")
    p.add_argument("--title", default=_default("title"), help="report title")
    p.add_argument("--note", help="a line added to the report's header")
    _add_common(p)
    p.set_defaults(run_eval=run_command)


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
    summaries: list[Any] = []
    try:
        units = load_suite(options, summaries)
    except (OSError, ValueError) as error:  # DatasetError is a ValueError listing every bad line
        return fail("run", str(error))
    for summary in summaries:
        if summary.skipped or summary.notes:
            print(summary.render(), file=sys.stderr)
    configure(args)
    try:
        run = asyncio.run(run_benchmark(options, units=units, summaries=summaries, progress=not args.quiet))
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
    lines = [f"protocol: {run.protocol}", "", *table(["strategy", "setting", "n", "Q*", "BR", "AFR", "RER", "PVR"], rows)]
    lines += ["", f"{run.n_items} items, {len(run.results)} cases, {failed} failed; report: {run.report.markdown}"]
    return "\n".join(lines)

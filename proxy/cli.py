"""Command line: `perg-proxy serve`, `perg-proxy local-model`, `perg-proxy monitor-worker`,
`perg-proxy monitor rejudge`, `perg-proxy eval …`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from pydantic import ValidationError

from .config import ConfigError, Settings, describe, load_settings, parse_settings

T = TypeVar("T")
DEFAULT_UPSTREAM = "http://127.0.0.1:8081/v1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perg-proxy", description="OpenAI-compatible personalization proxy.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="YAML configuration file (default: $PERG_CONFIG)")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--workers", type=int, help="override server.workers (processes sharing the port)")
    serve.add_argument(
        "--with-local-model",
        action="store_true",
        help="also start the embedded SmolLM2 model on the first upstream's loopback port",
    )
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)

    local = commands.add_parser("local-model", help="serve the embedded SmolLM2-135M-Instruct model")
    local.add_argument("--host", default="127.0.0.1")
    local.add_argument("--port", type=int, default=8081)
    local.add_argument("--alias", default=None, help="model name to answer to (default: smollm2-135m-instruct)")

    worker = commands.add_parser("monitor-worker", help="judge sampled requests from the shared Redis queue (monitor.queue: redis)")
    worker.add_argument("--config", help="YAML configuration file (default: $PERG_CONFIG)")
    worker.add_argument("--host", help="override monitor.worker.host (its /healthz, /readyz, /metrics)")
    worker.add_argument("--port", type=int, help="override monitor.worker.port")

    monitor = commands.add_parser("monitor", help="operate on the monitor's stored samples")
    monitor_commands = monitor.add_subparsers(dest="monitor_command", required=True)
    rejudge = monitor_commands.add_parser(
        "rejudge", help="re-run the current judges over stored samples (with texts); new verdicts are stored beside the old"
    )
    rejudge.add_argument("--config", help="YAML configuration file (default: $PERG_CONFIG)")
    rejudge.add_argument("--since", default="24h", help="how far back: 90m, 24h, 7d or seconds (default: 24h)")
    rejudge.add_argument(
        "--judge", action="append", choices=("relevance", "consistency", "follow"), help="re-run only this judge (repeatable); default: all"
    )
    rejudge.add_argument("--limit", type=int, default=10000, help="at most this many samples (default: 10000)")
    rejudge.add_argument("--concurrency", type=int, default=4, help="samples judged at once (default: 4)")

    from .eval.commands import add_eval_command

    add_eval_command(commands)

    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "local-model":
            from .local_model import run_local_model

            return run_local_model(args.host, args.port, args.alias)
        if args.command == "eval":
            return args.run_eval(args)
        if args.command == "monitor-worker":
            return _monitor_worker(args)
        if args.command == "monitor":
            return _rejudge(args)
    except ConfigError as error:
        print(f"perg-proxy: {error}", file=sys.stderr)
        return 2
    return 1


def settings_from(args: argparse.Namespace) -> Settings:
    path = args.config or os.environ.get("PERG_CONFIG")
    if path:
        settings = load_settings(path)
    else:
        settings = parse_settings(
            {
                "upstreams": [
                    {
                        "name": "local",
                        "base_url": DEFAULT_UPSTREAM,
                        "structured_output": "json_object_schema",
                        "max_tokens_parameter": "max_tokens",
                    }
                ]
            }
        )
    overrides = (("host", args.host), ("port", args.port), ("workers", getattr(args, "workers", None)))
    server = settings.server.model_copy(update={key: value for key, value in overrides if value is not None})
    try:
        return Settings.model_validate({**settings.model_dump(), "server": server.model_dump()})
    except ValidationError as error:
        raise ConfigError(f"invalid command-line override: {describe(error)}") from None


def _serve(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    from .logs import configure_logging

    configure_logging(settings.logging)
    if args.worker_index is None and settings.server.workers > 1:
        from .server.workers import run_workers

        return run_workers(settings, _serve_args(args), args.with_local_model)
    from .server.lifecycle import serve

    if args.worker_index:  # canary probes run in worker 0 only
        monitor = settings.monitor.model_copy(update={"canary": settings.monitor.canary.model_copy(update={"enabled": False})})
        settings = settings.model_copy(update={"monitor": monitor})
    worker = args.worker_index is not None
    return _run(serve(settings, with_local_model=args.with_local_model and not worker, reuse_port=worker))


def _monitor_worker(args: argparse.Namespace) -> int:
    settings = _config_only(args)
    overrides = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    if overrides:
        worker = settings.monitor.worker.model_copy(update=overrides)
        settings = settings.model_copy(update={"monitor": settings.monitor.model_copy(update={"worker": worker})})
    from .logs import configure_logging

    configure_logging(settings.logging)
    from .server.judge_worker import run_judge_worker

    return _run(run_judge_worker(settings))


def _rejudge(args: argparse.Namespace) -> int:
    settings = _config_only(args)
    from .logs import configure_logging
    from .monitor.rejudge import parse_since, print_report, rejudge

    configure_logging(settings.logging)
    try:
        since = parse_since(args.since)
    except ValueError as error:
        print(f"perg-proxy: --since: {error}", file=sys.stderr)
        return 2
    report = _run(rejudge(settings, since, set(args.judge or ()), limit=args.limit, concurrency=max(1, args.concurrency)))
    print_report(report)
    return 0 if report.failed == 0 else 1


def _config_only(args: argparse.Namespace) -> Settings:
    path = args.config or os.environ.get("PERG_CONFIG")
    if not path:
        raise ConfigError("this command needs the proxy's configuration: --config FILE (or $PERG_CONFIG)")
    return load_settings(path)


def _serve_args(args: argparse.Namespace) -> list[str]:
    """The `serve` options a worker gets (everything but --with-local-model: the supervisor owns it)."""
    out = []
    for flag, value in (("--config", args.config), ("--host", args.host), ("--port", args.port), ("--workers", args.workers)):
        if value is not None:
            out += [flag, str(value)]
    return out


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


if __name__ == "__main__":
    sys.exit(main())

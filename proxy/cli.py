"""Command line: `perg-proxy serve`, `perg-proxy local-model`, `perg-proxy eval …`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from pydantic import ValidationError

from .config import ConfigError, Settings, describe, load_settings, parse_settings

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


def _serve_args(args: argparse.Namespace) -> list[str]:
    """The `serve` options a worker gets (everything but --with-local-model: the supervisor owns it)."""
    out = []
    for flag, value in (("--config", args.config), ("--host", args.host), ("--port", args.port), ("--workers", args.workers)):
        if value is not None:
            out += [flag, str(value)]
    return out


def _run(coroutine) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


if __name__ == "__main__":
    sys.exit(main())

"""structlog set-up: key-value events, JSON by default, one line per event on stdout."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO, cast

import orjson
import structlog
from structlog.typing import EventDict, Processor

from .config import LoggingSettings

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _CurrentStderr:
    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def current_stderr() -> TextIO:
    """`sys.stderr` as it is when a line is written, not when logging was configured: a caller
    that swaps it (`contextlib.redirect_stderr`, a test's capture) and closes the old one leaves
    no logger writing to a closed file. Text only (the console format)."""
    return cast(TextIO, _CurrentStderr())


def configure_logging(settings: LoggingSettings, stream: TextIO | None = None) -> None:
    """Configure structlog (and the stdlib loggers of libraries) once per process."""
    level = LEVELS[settings.level]
    pid = os.getpid()

    def add_pid(logger: Any, name: str, event: EventDict) -> EventDict:
        return {**event, "pid": pid}

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_pid,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    out = stream or sys.stdout
    renderer: Processor
    factory: Callable[..., Any]
    if settings.format == "json":
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory = structlog.BytesLoggerFactory(out.buffer if hasattr(out, "buffer") else out)  # type: ignore[arg-type]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        factory = structlog.PrintLoggerFactory(out)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

"""Bounded retries for the benchmark's calls, and how a failure is told apart and described.

Transient failures (timeouts, connection errors, 429 and 5xx, a broken or garbled response) are
tried again with exponential backoff, at most `attempts` times in all. Anything else (a 400, a 401,
a judge reply that is not a verdict) is final at once: asking again at temperature 0 would get the
same answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

from ..errors import CallFailed, ProxyError, UpstreamProtocolError, UpstreamStatusError, UpstreamTimeout, UpstreamUnreachable
from ..upstream.client import UpstreamStreamBroken

T = TypeVar("T")
RETRIED_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
TRANSIENT_REASONS = frozenset({"timeout", "unreachable", "api_error", "empty"})


def transient(error: BaseException) -> bool:
    """Whether asking again could succeed."""
    if isinstance(error, CallFailed):
        if error.reason.startswith("http_"):
            return error.reason[5:].isdigit() and int(error.reason[5:]) in RETRIED_STATUS
        return error.reason in TRANSIENT_REASONS
    if isinstance(error, UpstreamStatusError):
        return error.status in RETRIED_STATUS
    if isinstance(error, UpstreamTimeout | UpstreamUnreachable | UpstreamStreamBroken | UpstreamProtocolError):
        return True
    return isinstance(error, TimeoutError | ConnectionError | aiohttp.ClientError)


def describe_error(error: BaseException) -> str:
    """One bounded line for the results: a reason code, then the message."""
    if isinstance(error, CallFailed):
        return str(error)[:300]
    if isinstance(error, ProxyError):
        return f"{error.code or type(error).__name__}: {error.message}"[:300]
    text = str(error)
    return (f"{type(error).__name__}: {text}" if text else type(error).__name__)[:300]


async def retried(call: Callable[[], Awaitable[T]], *, attempts: int, backoff_seconds: float) -> T:
    """`await call()`, again after a transient failure (waits backoff, 2·backoff, …); the last
    failure, or the first final one, propagates."""
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    attempt = 1
    while True:
        try:
            return await call()
        except Exception as error:
            if attempt >= attempts or not transient(error):
                raise
        await asyncio.sleep(backoff_seconds * 2 ** (attempt - 1))
        attempt += 1

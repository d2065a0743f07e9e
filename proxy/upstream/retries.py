"""When an upstream call is tried again, and after how long: the one policy of every upstream
call, pass-through, the proxy's own calls, the monitor's judges and `eval` (`upstreams[].retries`).

A call is repeated only where a repeat is safe:
- a status in `retry_on` (the upstream said it did not do the work: 429, 503, …), any method;
- a connection that could not be made (not a byte of the request sent): idempotent methods,
  and POST only when `retries.post_on_connect_error` opts in;
- a timeout or a connection lost after the request went out: idempotent methods only. A POST
  there may already be generating (and billed), so it is never sent again (RFC 9110 §9.2.2);
- never a stream that broke mid-way, nor a body that cannot be sent twice.
An upstream's `retry-after-ms` or `retry-after` (seconds or an HTTP date) is honoured up to
`max_backoff_seconds`; beyond it, no retry. Otherwise the wait doubles per attempt from
`backoff_seconds`, with jitter.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from multidict import CIMultiDict

from ..config import Retries
from ..errors import ProxyError, UpstreamConnectFailed, UpstreamStatusError, UpstreamTimeout, UpstreamUnreachable

T = TypeVar("T")
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


async def with_retries(attempt_once: Callable[[], Awaitable[T]], retries: Retries, *, method: str = "POST", replayable: bool = True) -> T:
    """`await attempt_once()`, again after a `ProxyError` the policy retries; the last error is
    raised. A call whose body cannot be sent again (`replayable` false) is tried once."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await attempt_once()
        except ProxyError as error:
            wait = retry_delay(error, attempt, retries, method) if replayable and attempt < retries.max_attempts else None
            if wait is None:
                raise
        await asyncio.sleep(wait)


def retry_delay(error: ProxyError, attempt: int, retries: Retries, method: str = "POST") -> float | None:
    """Seconds to wait before attempt `attempt + 1`, or None when this error is not retried."""
    if isinstance(error, UpstreamStatusError):
        if error.status not in retries.retry_on:
            return None
        asked = retry_after_seconds(error.headers)
        if asked is not None:
            return asked if asked <= retries.max_backoff_seconds else None
    elif isinstance(error, UpstreamConnectFailed):
        if method.upper() not in IDEMPOTENT and not retries.post_on_connect_error:
            return None
    elif isinstance(error, UpstreamUnreachable | UpstreamTimeout):
        if method.upper() not in IDEMPOTENT:
            return None
    else:
        return None
    backoff = retries.backoff_seconds * (2 ** (attempt - 1))
    return min(retries.max_backoff_seconds, backoff * (0.5 + random.random() / 2))


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The upstream's `retry-after-ms` or `retry-after` (seconds or an HTTP date), in seconds."""
    lowered = CIMultiDict(headers)
    if "retry-after-ms" in lowered:
        try:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None

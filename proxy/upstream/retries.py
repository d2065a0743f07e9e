"""When an upstream call is tried again, and after how long: the policy shared by the proxy's
own calls, the pass-through and the monitor's judges (`upstreams[].retries`).

Retried: the statuses in `retry_on`, an unreachable upstream and a timeout, never a stream that
broke mid-way (its answer was already under way). An upstream's `retry-after-ms` or `retry-after`
(seconds or an HTTP date) is honoured up to `max_backoff_seconds`; beyond it, no retry. Otherwise
the wait doubles per attempt from `backoff_seconds`, with jitter.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from multidict import CIMultiDict

from ..errors import ProxyError, UpstreamStatusError, UpstreamTimeout, UpstreamUnreachable

T = TypeVar("T")


async def with_retries(attempt_once: Callable[[], Awaitable[T | ProxyError]], retries: Any, *, replayable: bool = True) -> T:
    """Await `attempt_once()` until it gives a result (anything but a `ProxyError`), as often as
    the policy allows; the last error is raised. A call whose body cannot be sent again
    (`replayable` false) is tried once."""
    attempt = 0
    while True:
        attempt += 1
        result = await attempt_once()
        if not isinstance(result, ProxyError):
            return result
        wait = retry_delay(result, attempt, retries) if replayable and attempt < retries.max_attempts else None
        if wait is None:
            raise result
        await asyncio.sleep(wait)


def retry_delay(error: ProxyError, attempt: int, retries: Any) -> float | None:
    """Seconds to wait before attempt `attempt + 1`, or None when this error is not retried."""
    if isinstance(error, UpstreamStatusError):
        if error.status not in retries.retry_on:
            return None
        asked = retry_after_seconds(error.headers)
        if asked is not None:
            return asked if asked <= retries.max_backoff_seconds else None
    elif not isinstance(error, UpstreamUnreachable | UpstreamTimeout):
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

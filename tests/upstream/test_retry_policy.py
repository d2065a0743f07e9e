"""The one retry policy (`proxy/upstream/retries.py`), shared by live traffic and eval: a call
is repeated only where a repeat is safe, and `retry-after` is honoured."""

from __future__ import annotations

import email.utils
import time

import pytest

from proxy.config import Retries
from proxy.errors import (
    InvalidRequest,
    UpstreamConnectFailed,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamStreamBroken,
    UpstreamTimeout,
    UpstreamUnreachable,
    describe_error,
)
from proxy.upstream.retries import retry_delay, with_retries

ON = Retries(max_attempts=3, backoff_seconds=0.01, max_backoff_seconds=5)


@pytest.mark.parametrize(
    ("error", "method", "retried"),
    [
        (UpstreamStatusError(503, b"", {}), "POST", True),  # the upstream says it did not do the work
        (UpstreamStatusError(429, b"", {}), "POST", True),
        (UpstreamStatusError(400, b"", {}), "POST", False),
        (UpstreamStatusError(404, b"", {}), "GET", False),
        (UpstreamConnectFailed("refused"), "GET", True),
        (UpstreamConnectFailed("refused"), "POST", False),  # only with post_on_connect_error
        (UpstreamUnreachable("lost after sending"), "GET", True),
        (UpstreamUnreachable("lost after sending"), "POST", False),  # may be generating: never twice
        (UpstreamTimeout("no answer"), "GET", True),
        (UpstreamTimeout("no answer"), "POST", False),
        (UpstreamStreamBroken("mid-way"), "GET", False),
        (UpstreamProtocolError("garbage"), "GET", False),
        (InvalidRequest("bad"), "GET", False),
    ],
)
def test_what_is_retried(error, method, retried):
    assert (retry_delay(error, 1, ON, method) is not None) is retried


def test_post_on_connect_error_is_an_opt_in():
    opted = Retries(max_attempts=3, post_on_connect_error=True)
    assert retry_delay(UpstreamConnectFailed("refused"), 1, opted, "POST") is not None
    assert retry_delay(UpstreamUnreachable("lost"), 1, opted, "POST") is None


def test_retry_after_in_seconds_ms_and_http_date_is_honoured_up_to_the_cap():
    assert retry_delay(UpstreamStatusError(429, b"", {"retry-after": "2"}), 1, ON) == 2.0
    assert retry_delay(UpstreamStatusError(429, b"", {"retry-after-ms": "250", "retry-after": "9"}), 1, ON) == 0.25
    date = email.utils.formatdate(time.time() + 3, usegmt=True)
    assert 1.0 < retry_delay(UpstreamStatusError(503, b"", {"Retry-After": date}), 1, ON) <= 3.0
    assert retry_delay(UpstreamStatusError(429, b"", {"retry-after": "60"}), 1, ON) is None  # past max_backoff: give up


async def test_with_retries_is_bounded_and_raises_the_last_error():
    calls = []

    async def busy() -> str:
        calls.append(1)
        raise UpstreamStatusError(503, b'{"error": {"message": "busy"}}', {})

    with pytest.raises(UpstreamStatusError):
        await with_retries(busy, ON)
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(UpstreamStatusError):
        await with_retries(busy, ON, replayable=False)  # a body that cannot be sent twice
    assert len(calls) == 1


def test_a_failure_is_described_in_one_bounded_line():
    assert describe_error(UpstreamStatusError(503, b'{"error": {"message": "busy"}}', {})) == "upstream_http_503: busy"

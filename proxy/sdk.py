"""The openai SDK, for calls made in the background (judges, the offline benchmark).

The only module that imports openai. Background calls get the SDK's retries with exponential
backoff (429, 408, 409, 5xx, timeouts and connection errors; `retry-after` honoured) and its typed
errors; the request path does not use it (see `upstream.py` for why).
"""

from __future__ import annotations

from typing import Any

import httpx2
import openai

from .structured import extract_json_object

RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError, openai.APIConnectionError)


class CallFailed(Exception):
    """A background call that failed after its retries; `reason` is a bounded label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def client(base_url: str, api_key: str, *, timeout: float, max_retries: int, headers: dict[str, str] | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key=api_key or "no-key",
        timeout=httpx2.Timeout(timeout, connect=min(timeout, 10.0)),
        max_retries=max_retries,
        default_headers=headers or None,
        http_client=openai.DefaultAioHttpClient(timeout=httpx2.Timeout(timeout, connect=min(timeout, 10.0))),
    )


async def complete(sdk: openai.AsyncOpenAI, body: dict[str, Any]) -> str:
    """One chat completion; the first choice's text. Failures raise `CallFailed` with a reason."""
    known = {key: body[key] for key in ("model", "messages", "temperature", "max_tokens", "seed") if key in body}
    extra = {key: value for key, value in body.items() if key not in known}
    try:
        completion = await sdk.chat.completions.create(**known, extra_body=extra or None)
    except openai.APIStatusError as error:
        raise CallFailed(f"http_{error.status_code}", error.message) from error
    except openai.APITimeoutError as error:
        raise CallFailed("timeout", str(error)) from error
    except openai.APIConnectionError as error:
        raise CallFailed("unreachable", str(error)) from error
    except openai.APIError as error:
        raise CallFailed("api_error", str(error)) from error
    if not completion.choices:
        raise CallFailed("empty", "no choices in the reply")
    return completion.choices[0].message.content or ""


async def complete_json(sdk: openai.AsyncOpenAI, body: dict[str, Any]) -> dict[str, Any]:
    """One chat completion whose reply must hold a JSON object (else `CallFailed("unparseable")`)."""
    text = await complete(sdk, body)
    data = extract_json_object(text)
    if data is None:
        raise CallFailed("unparseable", f"no JSON object in the reply: {text[:120]!r}")
    return data

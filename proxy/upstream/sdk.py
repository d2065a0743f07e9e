"""The openai SDK, for the offline benchmark's calls (`perg-proxy eval` against any
OpenAI-compatible server). The only module that imports openai.

The proxy itself (the request path and the monitor, which shares its CPU) calls upstreams with
`client.py`: the SDK costs several times more CPU per call (docs/benchmark.md).
"""

from __future__ import annotations

from typing import Any

import httpx2
import openai

from ..errors import CallFailed
from .structured import extract_json_object


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

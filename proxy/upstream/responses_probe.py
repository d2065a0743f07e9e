"""Whether an upstream has a Responses API (`upstreams[].responses_api`, when not configured).

One request that costs no tokens: `POST {base_url}/responses` with an empty JSON object. A
server without the route answers 404 or 405 (llama_cpp.server, most chat-only servers): then
`via_chat`. A server with it refuses the body (400, 422): `native`. Anything else (unreachable,
401, 5xx) decides nothing; the request that needs the answer asks again.
"""

from __future__ import annotations

import asyncio

import structlog

from ..errors import ProxyError, UpstreamStatusError
from .client import UpstreamClient, Upstreams
from .headers import upstream_request_headers

log = structlog.get_logger("perg.probe")
PROBE_TIMEOUT = 10.0
ABSENT = (404, 405)


async def probe(upstream: UpstreamClient) -> str | None:
    """`native`, `via_chat`, or None when the answer says nothing about the route."""
    headers = upstream_request_headers({}, "perg-probe", upstream.settings.api_key, upstream.settings.headers)
    headers["Content-Type"] = "application/json"
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            async with upstream.open("POST", "/responses", headers=headers, data=b"{}", stage="probe") as response:
                await response.read()
    except UpstreamStatusError as error:
        if error.status in ABSENT:
            return "via_chat"
        return "native" if error.status in (400, 422) else None
    except (ProxyError, TimeoutError):
        return None
    return "native"


async def responses_mode(upstream: UpstreamClient) -> str:
    """The upstream's mode: configured or probed once; `native` while nothing is known."""
    if upstream.responses_api is not None:
        return upstream.responses_api
    async with upstream.responses_probing:
        if upstream.responses_api is None:
            found = await probe(upstream)
            if found is not None:
                upstream.responses_api = found
                log.info("responses_api_probed", upstream=upstream.name, responses_api=found)
    return upstream.responses_api or "native"


async def probe_all(upstreams: Upstreams) -> None:
    """At start: every upstream whose mode is not configured."""
    await asyncio.gather(*(responses_mode(upstream) for upstream in upstreams.all if upstream.responses_api is None))

"""The strategies: what the proxy does with a chat request once it knows the preferences.

`off` forwards the client's request untouched (its very bytes when nothing was taken out of it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..headers import upstream_request_headers
from ..upstream import Upstreams
from .forward import forward, usage_of
from .turn import Reply, StreamReply, Turn

Strategy = Callable[[Turn, Upstreams], Awaitable[Reply | StreamReply]]


async def serve_off(turn: Turn, upstreams: Upstreams) -> Reply | StreamReply:
    turn.aligned = "false"
    upstream = upstreams.for_model(turn.model or "")
    settings = upstream.settings
    headers = upstream_request_headers(turn.headers, turn.request_id, settings.api_key, settings.headers)
    headers["Content-Type"] = "application/json"
    reply = await forward(turn, upstream, "POST", "/chat/completions", data=turn.forward_body(), headers=headers)
    if isinstance(reply, Reply) and reply.status == 200:
        turn.usage = usage_of(reply.body)
        upstream.count_usage(turn.model, "forward", turn.usage)
    return reply


STRATEGIES: dict[str, Strategy] = {"off": serve_off}

"""At start, each upstream's `structured_output` style is tried once with a tiny constrained
request, so a style the upstream rejects is a loud warning naming the key to set, not a relevance
gate that silently fails open on every request (and `/readyz` shows it).

Per upstream the result is `ok`, `mismatch` (the style is rejected while the same request without
it is answered; the styles that work are tried and the first is named), `unconstrained` (accepted,
but the reply is not the JSON asked for), `skipped` (style `none`, or no model name to ask with)
or `unreachable: <code>` (the upstream failed without the style too: not a style question).
After a mismatch, a client's own `response_format: json_schema` is sent in the suggested style
(`upstream/adapt.py`); the proxy's own calls keep the configured one until the key is set.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from ..errors import ProxyError, UpstreamStatusError
from ..upstream.client import UpstreamClient, Upstreams
from ..upstream.headers import upstream_request_headers
from ..upstream.structured import extract_json_object, response_format
from .gate import style_key

log = structlog.get_logger("perg.probe")
STYLES = ("json_object_schema", "json_schema", "json_object")
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
PROBE_TIMEOUT = 30.0


@dataclass(slots=True)
class StyleProbes:
    """The probe results by upstream name; `pending` until the probe has run."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return dict(self.results)

    async def run(self, upstreams: Upstreams) -> None:
        for upstream in upstreams.all:
            self.results[upstream.name] = {"style": upstream.settings.structured_output, "result": "pending"}
        await asyncio.gather(*(self._one(upstream) for upstream in upstreams.all))

    async def _one(self, upstream: UpstreamClient) -> None:
        entry = self.results[upstream.name]
        try:
            entry.update(await probe_style(upstream))
        except Exception as error:  # noqa: BLE001 - a probe never stops the proxy
            entry["result"] = f"unreachable: {type(error).__name__}"
        if entry["result"] == "mismatch":
            # a client's json_schema response_format is sent in the style that works (upstream/adapt.py)
            upstream.adopt_json_style(entry["suggested"])
        if entry["result"] in ("mismatch", "unconstrained"):
            log.warning(
                "structured_output_mismatch", upstream=upstream.name, style=entry["style"], result=entry["result"],
                key=style_key(upstream.name), suggested=entry.get("suggested"),
                detail="the relevance gate and the verifier will fail open on every request until the key is set",
                client_response_format=upstream.dialect.json_style,
            )  # fmt: skip


def probe_body(model: str, style: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": 'Reply with the JSON object {"ok": true} and nothing else.'}],
        "max_tokens": 12,
        "temperature": 0,
    }
    constraint = response_format(style, "perg_probe", SCHEMA)
    if constraint is not None:
        body["response_format"] = constraint
    return body


async def probe_style(upstream: UpstreamClient) -> dict[str, Any]:
    style = upstream.settings.structured_output
    if style == "none":
        return {"result": "skipped"}
    model = await probe_model(upstream)
    if model is None:
        return {"result": "skipped", "detail": "no model name to probe with"}
    outcome = await try_style(upstream, model, style)
    if outcome != "rejected":
        return {"result": outcome}
    try:
        await ask(upstream, probe_body(model, "none"))
    except ProxyError as error:
        return {"result": f"unreachable: {error.code}"}
    for other in STYLES:
        if other != style and await try_style(upstream, model, other) == "ok":
            return {"result": "mismatch", "suggested": other}
    return {"result": "mismatch", "suggested": "none"}


async def try_style(upstream: UpstreamClient, model: str, style: str) -> str:
    try:
        data = await ask(upstream, probe_body(model, style))
    except UpstreamStatusError:
        return "rejected"
    choices = data.get("choices") or [{}]
    content = ((choices[0] or {}).get("message") or {}).get("content")
    parsed = extract_json_object(content) if isinstance(content, str) else None
    return "ok" if parsed is not None and isinstance(parsed.get("ok"), bool) else "unconstrained"


async def ask(upstream: UpstreamClient, body: dict[str, Any]) -> dict[str, Any]:
    result = await upstream.chat(body, request_id="perg-probe", timeout=PROBE_TIMEOUT, stage="probe")
    return result.data


async def probe_model(upstream: UpstreamClient) -> str | None:
    """A model to ask: the first literal name in `models`, else the first the upstream lists."""
    for pattern in upstream.settings.models:
        if not any(char in pattern for char in "*?["):
            return pattern
    headers = upstream_request_headers({}, "perg-probe", upstream.settings.api_key, upstream.settings.headers)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            async with upstream.open("GET", "/models", headers=headers, stage="probe") as response:
                listing = orjson.loads(await response.read())
    except (ProxyError, TimeoutError, orjson.JSONDecodeError):
        return None
    models = listing.get("data") if isinstance(listing, dict) else None
    first = models[0] if isinstance(models, list) and models and isinstance(models[0], dict) else {}
    return first.get("id") if isinstance(first.get("id"), str) else None

"""Which headers cross the proxy, in each direction.

Upstream, only the client headers on an allowlist (`FORWARDED`: content negotiation, the SDKs'
own headers, tracing, conditional requests) go: credentials of any vendor (`X-Goog-Api-Key`,
`Ocp-Apim-Subscription-Key`, `anthropic-api-key`, …), spoofable `X-Forwarded-For` / `Forwarded`,
cookies and `X-Perg-*` never leave the proxy, which sends its own key. Back to the client,
hop-by-hop headers (RFC 9110 §7.6.1) and the headers named in `Connection` never cross.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

# The proxy's request id travels upstream as OpenAI's client request id header, not as
# X-Request-ID: some servers (llama_cpp.server) reject an X-Request-ID that is not a UUID.
CLIENT_REQUEST_ID = "X-Client-Request-Id"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
FORWARDED = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "content-type",
        "user-agent",
        "openai-beta",
        "idempotency-key",
        "traceparent",
        "tracestate",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "range",
    }
)
FORWARDED_PREFIXES = ("x-stainless-",)  # the openai SDKs' description of themselves
RESPONSE_DROP = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server", "set-cookie", "x-request-id"}


def _connection_tokens(headers: Mapping[str, str]) -> set[str]:
    """Header names listed in `Connection` (hop-by-hop by declaration)."""
    tokens: set[str] = set()
    if isinstance(headers, CIMultiDict | CIMultiDictProxy) and "Connection" not in headers:
        return tokens  # a case-insensitive lookup instead of a look at every header
    for name, value in headers.items():
        if name.lower() == "connection":
            tokens.update(token.strip().lower() for token in value.split(",") if token.strip())
    return tokens


def upstream_request_headers(incoming: Mapping[str, str], request_id: str, api_key: str, extra: Mapping[str, str]) -> CIMultiDict[str]:
    """Headers sent upstream: the client's headers on the allowlist, the upstream's configured
    headers, the proxy's request id as `X-Client-Request-Id`, the proxy's key."""
    named = _connection_tokens(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if (lower in FORWARDED or lower.startswith(FORWARDED_PREFIXES)) and lower not in named:
            out.add(name, value)
    out.update(extra)
    out[CLIENT_REQUEST_ID] = request_id
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


def client_response_headers(upstream: Mapping[str, str], *, encoded: bool = False) -> CIMultiDict[str]:
    """Headers passed back to the client: end-to-end ones, the upstream's request id renamed.
    `encoded`: the body is relayed as the upstream sent it, so its `Content-Encoding` goes too."""
    named = _connection_tokens(upstream)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lower = name.lower()
        if lower == "x-request-id":
            out["x-upstream-request-id"] = value
        elif (lower not in RESPONSE_DROP or (encoded and lower == "content-encoding")) and lower not in named:
            out.add(name, value)
    return out

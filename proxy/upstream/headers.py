"""Which headers cross the proxy, in each direction.

Hop-by-hop headers (RFC 9110 §7.6.1) and the headers named in `Connection` never cross. The
client's credentials never reach the upstream (the proxy sends its own key), and nothing that
carries preferences (`X-Perg-*`) leaves the proxy.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict

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
REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "api-key",
    "x-api-key",
    "cookie",
    "accept-encoding",
    "openai-organization",
    "openai-project",
    "x-request-id",
    "x-client-request-id",
    "expect",
}
RESPONSE_DROP = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server", "set-cookie", "x-request-id"}


def _connection_tokens(headers: Mapping[str, str]) -> set[str]:
    """Header names listed in `Connection` (hop-by-hop by declaration)."""
    tokens: set[str] = set()
    for name, value in headers.items():
        if name.lower() == "connection":
            tokens.update(token.strip().lower() for token in value.split(",") if token.strip())
    return tokens


def upstream_request_headers(incoming: Mapping[str, str], request_id: str, api_key: str, extra: Mapping[str, str]) -> CIMultiDict[str]:
    """Headers sent upstream: the client's end-to-end headers, minus credentials and X-Perg-*;
    the proxy's request id as `X-Client-Request-Id`."""
    named = _connection_tokens(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in REQUEST_DROP or lower in named or lower.startswith("x-perg-"):
            continue
        out.add(name, value)
    out.update(extra)
    out[CLIENT_REQUEST_ID] = request_id
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


def client_response_headers(upstream: Mapping[str, str]) -> CIMultiDict[str]:
    """Headers passed back to the client: end-to-end ones, the upstream's request id renamed."""
    named = _connection_tokens(upstream)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lower = name.lower()
        if lower == "x-request-id":
            out["x-upstream-request-id"] = value
        elif lower not in RESPONSE_DROP and lower not in named:
            out.add(name, value)
    return out

"""The HTTP side of one upstream on aiohttp's client: the session and its one connector, TLS,
proxies from the environment, and the one map from a transport failure to the proxy's errors.

* One `aiohttp.ClientSession` over one `TCPConnector` per upstream and process: every call to
  it (pass-through, stages, the gate, judges, canary, shadow, `eval`) shares the connector, so
  `max_connections` bounds everything the process opens to that upstream.
* Happy Eyeballs (RFC 8305): the next address is tried after `HAPPY_EYEBALLS_DELAY` seconds, so
  a black-holed IPv6 address does not burn the whole connect timeout.
* Response header lines and fields are bounded (`MAX_HEADER_LINE`, `MAX_HEADER_FIELD`); a longer
  one is a 502.
* `trust_env` (default on): `HTTP(S)_PROXY` / `NO_PROXY` from the environment, decided once per
  upstream when its client is made (`env_proxy`: the base URL's host is fixed, so the decision
  is too). aiohttp's own `trust_env` would look the environment and `~/.netrc` up again on a
  worker thread for every call, which cost about half the proxy's CPU per pass-through request;
  netrc credentials are never sent (the upstream gets `api_key`). `ca_bundle`, and
  `client_cert` / `client_key`, per upstream. Certificates are always verified.
* Redirects are never followed: a 3xx is a 502 that names it (the caller's, `client.py`).
* A pooled connection on which the upstream wrote anything while it sat idle is closed, not
  reused: those bytes would otherwise be read as the next call's answer (`CheckedConnector`).
"""

from __future__ import annotations

import ssl
import urllib.request
from typing import Any

import aiohttp
import aiohttp.abc
import aiohttp.connector
from yarl import URL

from ..config import UpstreamSettings
from ..errors import ProxyError, UpstreamConnectFailed, UpstreamProtocolError, UpstreamStreamBroken, UpstreamTimeout, UpstreamUnreachable

HAPPY_EYEBALLS_DELAY = 0.25  # seconds, RFC 8305's recommended connection attempt delay
MAX_HEADER_LINE = 8190  # bytes of the status line and of one header line
MAX_HEADER_FIELD = 8190  # bytes of one header field
KEEPALIVE_SECONDS = 15.0  # an idle pooled connection older than this is closed


class CheckedConnector(aiohttp.TCPConnector):
    """aiohttp's connector, minus reuse of a connection that received bytes while idle.

    aiohttp parses bytes that arrive on an idle pooled connection and queues them as a response,
    which the next request on that connection then reads as its own answer. aiohttp has no
    public hook for this, so this overrides `TCPConnector._get` (the pooled-connection lookup):
    aiohttp is pinned below the next minor version in pyproject.toml, and
    tests/upstream/test_upstream_behaviour.py (the idle-bytes test) fails loudly if it stops working."""

    async def _get(self, key: Any, traces: list[Any]) -> aiohttp.connector.Connection | None:
        while (connection := await super()._get(key, traces)) is not None:
            protocol = connection.protocol
            if protocol is not None and not protocol.should_close:
                return connection
            connection.close()  # released with should_close: the connector closes it
        return None


def ssl_context(settings: UpstreamSettings) -> ssl.SSLContext | bool:
    """Verified TLS with the system's CAs, or the upstream's `ca_bundle`; its client certificate."""
    if settings.ca_bundle is None and settings.client_cert is None:
        return True  # aiohttp's default verified context
    context = ssl.create_default_context(cafile=str(settings.ca_bundle) if settings.ca_bundle else None)
    if settings.client_cert is not None:
        context.load_cert_chain(str(settings.client_cert), str(settings.client_key) if settings.client_key else None)
    return context


def env_proxy(settings: UpstreamSettings) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The forward proxy the environment names for the upstream's base URL (`HTTP_PROXY` /
    `HTTPS_PROXY`, unless `NO_PROXY` covers its host), with the credentials in its URL; none
    when `trust_env` is off. The standard library reads the variables, as aiohttp itself does."""
    if not settings.trust_env:
        return None, None
    target = URL(settings.base_url)
    if urllib.request.proxy_bypass(target.host or ""):
        return None, None
    named = urllib.request.getproxies().get(target.scheme or "")
    if not named:
        return None, None
    proxy = URL(named if "://" in named else f"http://{named}")
    auth = aiohttp.BasicAuth(proxy.user or "", proxy.password or "") if proxy.user else None
    return proxy.with_user(None), auth


def open_session(settings: UpstreamSettings, resolver: aiohttp.abc.AbstractResolver | None = None) -> aiohttp.ClientSession:
    """The upstream's session; `resolver` replaces the system's name lookup (tests)."""
    t = settings.timeouts
    connector = CheckedConnector(
        limit=settings.max_connections,
        limit_per_host=0,
        ttl_dns_cache=300,
        keepalive_timeout=KEEPALIVE_SECONDS,
        happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY,
        ssl=ssl_context(settings),
        resolver=resolver,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=t.connect, sock_read=t.idle),
        # the client's Accept-Encoding is passed on as sent; aiohttp adds none of its own
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        # One session serves every client: a cookie an upstream sets (a CDN's, say) must not
        # ride along on other clients' requests. It also spares a jar lookup per call.
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,  # the proxy is decided once per upstream (`env_proxy`), not per call
        max_line_size=MAX_HEADER_LINE,
        max_field_size=MAX_HEADER_FIELD,
    )


def transport_error(error: BaseException, upstream: str, where: str = "", *, mid_body: bool = False) -> ProxyError:
    """The proxy's error for a failure of aiohttp or the socket; raised by the caller. Once the
    answer has started (`mid_body`), anything but a timeout is a broken stream."""
    where = f" {where}" if where else ""
    if mid_body and not isinstance(error, TimeoutError):
        return UpstreamStreamBroken(f"upstream {upstream} broke off{where}: {describe(error)}")
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return UpstreamConnectFailed(f"upstream {upstream} could not be connected to in time{where}")
    if isinstance(error, TimeoutError):
        return UpstreamTimeout(f"upstream {upstream} timed out{where}")
    if isinstance(error, aiohttp.ClientConnectorError | aiohttp.ClientProxyConnectionError):
        return UpstreamConnectFailed(f"upstream {upstream} is unreachable{where}: {describe(error)}")
    if isinstance(error, aiohttp.ClientResponseError | aiohttp.ClientPayloadError | aiohttp.InvalidURL):
        return UpstreamProtocolError(f"upstream {upstream} sent an invalid response{where}: {describe(error)}")
    return UpstreamUnreachable(f"upstream {upstream} broke off{where}: {describe(error)}")


def describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__

"""Clients that hold connections (issue 11): slow headers, slow bodies, idle keep-alive, more
connections than descriptors, clients that stop reading, and a SIGTERM that must not overrun
`grace_seconds`. Each is the attack itself on loopback, bounded in count and time."""

from __future__ import annotations

import resource
import signal
import socket
import threading
import time

import httpx2
import pytest

from tests.conftest import CLIENT_KEY, free_port, proxy_settings
from tests.processes import Proxy, write_config

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
FAST = {"header_timeout_seconds": 0.5, "body_timeout_seconds": 0.5, "keepalive_timeout_seconds": 1.0}


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Seconds until the peer closes `sock` (sending `trickle` every 0.1 s meanwhile), or None."""
    started = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - started < seconds:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            pass
        except ConnectionError:
            return time.monotonic() - started
        if trickle:
            try:
                sock.sendall(trickle)
            except OSError:
                return time.monotonic() - started
    return None


def connect(proxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.server.port), timeout=5)


def test_slowloris_headers_are_cut_at_the_header_timeout(start_proxy):
    proxy = start_proxy(server={"host": "127.0.0.1", "port": 0, **FAST})
    with connect(proxy) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        took = closed_within(sock, 5, trickle=b"X-A: b\r\n")  # a header line every 0.1 s, never the end
    assert took is not None and took < 2, took
    with connect(proxy) as silent:  # a connection that never sends a byte
        took = closed_within(silent, 5)
    assert took is not None and took < 2, took
    assert proxy.metric("perg_connections_refused_total", {"reason": "header_timeout"}) == 2
    assert httpx2.get(proxy.url + "/healthz").status_code == 200


def test_a_slow_body_is_408_and_an_idle_keepalive_is_closed(start_proxy, fake_upstream):
    proxy = start_proxy(server={"host": "127.0.0.1", "port": 0, **FAST})
    with connect(proxy) as sock:
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
        sock.sendall(head.encode() + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        sock.settimeout(5)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer and fake_upstream.received == []
    with connect(proxy) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        took = closed_within(sock, 5)  # kept alive, then idle
    assert took is not None and 0.5 < took < 2.5, took


def test_connections_over_the_cap_are_closed_and_real_requests_still_served(start_proxy):
    proxy = start_proxy(server={"host": "127.0.0.1", "port": 0, "max_connections": 20, "header_timeout_seconds": 30})
    held = [connect(proxy) for _ in range(20)]
    try:
        time.sleep(0.2)
        with connect(proxy) as extra:
            assert closed_within(extra, 2) is not None
        assert proxy.metric("perg_connections_refused_total", {"reason": "limit"}) >= 1
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert httpx2.get(proxy.url + "/healthz").status_code == 200


def test_the_default_cap_stays_below_the_descriptor_limit():
    from proxy.server.connections import connection_cap

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    settings = proxy_settings("http://127.0.0.1:9/v1")
    cap = connection_cap(settings)
    assert cap + 2 * settings.upstreams[0].max_connections < soft
    assert connection_cap(proxy_settings("http://127.0.0.1:9/v1", server={"max_connections": 7})) == 7


def test_clients_that_stop_reading_free_the_upstream_pool(start_proxy, fake_upstream):
    """Two clients take a 512 MiB download and never read it, with a pool of two upstream
    connections: the write deadline cuts them, so a third client is served."""
    proxy = start_proxy(
        server={"host": "127.0.0.1", "port": 0, "write_timeout_seconds": 0.5},
        upstreams=[{"name": "main", "base_url": fake_upstream.url, "max_connections": 2, "timeouts": {"total": 60}}],
    )
    fake_upstream.record = False
    stalled = []
    try:
        for _ in range(2):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", proxy.server.port))
            request = f"GET /v1/files/f/content?size={512 * 1024 * 1024} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\r\n"
            sock.sendall(request.encode())
            stalled.append(sock)
        time.sleep(0.3)
        started = time.monotonic()
        response = httpx2.get(proxy.base_url + "/models", headers=AUTH, timeout=10)
        assert response.status_code == 200 and time.monotonic() - started < 5
    finally:
        fake_upstream.record = True
        for sock in stalled:
            sock.close()


@pytest.fixture
def processes():
    started: list[Proxy] = []
    yield started
    for proxy in started:
        proxy.stop()


def test_sigterm_finishes_within_grace_seconds(tmp_path, fake_upstream, processes):
    """A stream longer than the grace period, a request that hangs upstream, and a monitor job
    stuck on its judge: the process still exits 0 within `grace_seconds` (2 here) of SIGTERM."""
    port = free_port()
    monitor = "monitor: {enabled: true, sample_rate: 1.0, workers: 1, drain_seconds: 30, judge: {model: hang, timeout_seconds: 60}}"
    config = write_config(tmp_path, port, fake_upstream.url, extra=monitor)
    config.write_text(config.read_text().replace("pre_stop_seconds: 1.0, grace_seconds: 10", "pre_stop_seconds: 0, grace_seconds: 2"))
    proxy = Proxy(config, port)
    processes.append(proxy)
    sampled = {"model": "echo", "messages": [{"role": "user", "content": "q"}], "personalization": {"preferences": ["be brief"]}}
    assert httpx2.post(proxy.url + "/v1/chat/completions", json=sampled, headers=AUTH, timeout=10).status_code == 200

    def call(body: dict) -> None:
        try:
            with httpx2.stream("POST", proxy.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30) as response:
                b"".join(response.iter_bytes())
        except httpx2.HTTPError:
            pass

    long_stream = {"model": "drip-2000", "messages": [{"role": "user", "content": "long"}], "stream": True}
    hanging = {"model": "hang-1", "messages": [{"role": "user", "content": "hang"}]}
    threads = [threading.Thread(target=call, args=(body,)) for body in (long_stream, hanging)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    proxy.process.send_signal(signal.SIGTERM)
    assert proxy.process.wait(30) == 0
    took = time.monotonic() - started
    for thread in threads:
        thread.join(30)
    assert took < 2.0 + 0.4, f"SIGTERM took {took:.2f} s with grace_seconds: 2"


def test_unauthenticated_readyz_does_not_amplify_into_upstream_calls(proxy, fake_upstream):
    with httpx2.Client(timeout=10) as client:
        answers = [client.get(proxy.url + "/readyz").status_code for _ in range(200)]
    assert answers == [200] * 200
    probes = [item for item in fake_upstream.received if item.path == "/v1/models"]
    assert 1 <= len(probes) <= 5, len(probes)  # one per second at most, not one per call
    time.sleep(1.1)
    httpx2.get(proxy.url + "/readyz")
    assert len([item for item in fake_upstream.received if item.path == "/v1/models"]) == len(probes) + 1


def test_metrics_can_require_a_key(start_proxy):
    open_proxy = start_proxy()
    assert httpx2.get(open_proxy.url + "/metrics").status_code == 200
    keyed = start_proxy(auth={"client_keys": [CLIENT_KEY], "admin_key": "admin-secret", "metrics_key": "scrape-me"})
    for headers in ({}, {"Authorization": "Bearer wrong"}, AUTH):
        refused = httpx2.get(keyed.url + "/metrics", headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    scraped = httpx2.get(keyed.url + "/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert scraped.status_code == 200 and "perg_requests_total" in scraped.text

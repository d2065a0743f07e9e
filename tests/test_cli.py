"""The command line as a user runs it: real processes, stopped by their own PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from proxy import local_model
from tests.conftest import CLIENT_KEY, ROOT, UPSTREAM_KEY, free_port

SECRET_CONTENT = "my-secret-message-content-4242"
SECRET_PREFERENCE = "secret-preference-text-1717"
SECRET_STORED = "secret-stored-preference-2929"


def start_serve(tmp_path: Path, config: str, env: dict[str, str] | None = None, args: list[str] | None = None) -> subprocess.Popen:
    path = tmp_path / "config.yaml"
    path.write_text(config)
    return subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", *(args if args is not None else ["--config", str(path)])],
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            if httpx2.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx2.HTTPError:
            time.sleep(0.1)
    raise AssertionError("the proxy did not become healthy")


def stop(process: subprocess.Popen) -> tuple[int, str, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        out, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, out.decode(), err.decode()


def config_text(port: int, upstream: str, log_content: bool = False, keys: str = f"[{CLIENT_KEY}]", strategy: str = "off") -> str:
    return f"""
server: {{host: 127.0.0.1, port: {port}}}
upstreams:
  - {{name: main, base_url: "{upstream}", api_key: {UPSTREAM_KEY}}}
personalization: {{default_strategy: "{strategy}"}}
auth: {{client_keys: {keys}, admin_key: admin-secret}}
profiles: {{backend: memory}}
monitor: {{enabled: true, sample_rate: 1.0, shadow_rate: 1.0, store_samples: true}}
logging: {{log_content: {str(log_content).lower()}}}
"""


def port_is_listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_bad_config_exits_non_zero_before_listening(tmp_path):
    port = free_port()
    process = start_serve(tmp_path, config_text(port, "http://127.0.0.1:1/v1").replace("port:", "prot:"))
    process.wait(20)
    _, err = process.communicate()
    assert process.returncode == 2
    assert "server.prot" in err.decode()
    assert not port_is_listening(port)


def test_serve_logs_one_event_per_request_without_secrets(tmp_path, fake_upstream):
    """At the default level no key, preference text or message content reaches the logs, through
    every path: pass-through, both strategies, the monitor's judges and shadow runs, failures."""
    port = free_port()
    process = start_serve(tmp_path, config_text(port, fake_upstream.url, strategy="pref_aligner"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        admin = {"Authorization": "Bearer admin-secret"}
        assert httpx2.put(f"{url}/perg/profiles/carol", json={"preferences": [SECRET_STORED]}, headers=admin).status_code == 200
        requests = [
            ("req-one", {"personalization": {"preferences": [SECRET_PREFERENCE]}}, {}),
            ("req-two", {"personalization": {"strategy": "naive"}}, {"X-Perg-Preferences": f'["{SECRET_PREFERENCE}"]'}),
            ("req-three", {"user": "carol", "stream": True}, {}),
            ("req-four", {"personalization": {"preferences": [SECRET_PREFERENCE]}, "model": "error-500"}, {}),
        ]
        for request_id, extra, headers in requests:
            body = {"model": "echo", "messages": [{"role": "user", "content": SECRET_CONTENT}], **extra}
            response = httpx2.post(
                f"{url}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {CLIENT_KEY}", "X-Request-ID": request_id, **headers},
            )
            assert response.status_code == (500 if request_id == "req-four" else 200)
        assert httpx2.get(f"{url}/v1/models", headers={"Authorization": "Bearer wrong-key-333"}).status_code == 401
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(httpx2.get(f"{url}/perg/monitor/samples", headers=admin).json()["data"]) < 6:
            time.sleep(0.2)  # let the monitor judge (and log) in the background
    finally:
        code, out, err = stop(process)
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    logged = [e for e in events if e["event"] == "request" and e["request_id"].startswith("req-")]
    assert [e["request_id"] for e in logged] == ["req-one", "req-two", "req-three", "req-four"]
    assert all(e["duration_ms"] >= e["overhead_ms"] >= 0 for e in logged)
    assert any(e["event"] == "listening" for e in events)
    for secret in (CLIENT_KEY, UPSTREAM_KEY, "admin-secret", "wrong-key-333", SECRET_CONTENT, SECRET_PREFERENCE, SECRET_STORED):
        assert secret not in out and secret not in err, secret


def test_log_content_and_perg_config_env(tmp_path, fake_upstream):
    port = free_port()
    path = tmp_path / "elsewhere.yaml"
    path.write_text(config_text(port, fake_upstream.url, log_content=True))
    process = start_serve(tmp_path, "", env={"PERG_CONFIG": str(path)}, args=[])
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        httpx2.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": SECRET_CONTENT}]},
            headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        )
    finally:
        code, out, _ = stop(process)
    assert code == 0
    assert SECRET_CONTENT in out
    assert CLIENT_KEY not in out


def test_open_auth_warns_at_start(tmp_path, fake_upstream):
    port = free_port()
    process = start_serve(tmp_path, config_text(port, fake_upstream.url, keys="[]"))
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
    finally:
        _, out, _ = stop(process)
    warnings = [json.loads(line) for line in out.splitlines() if '"auth_open"' in line]
    assert warnings and warnings[0]["level"] == "warning"


def test_port_in_use_is_a_clear_error(tmp_path, fake_upstream):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = start_serve(tmp_path, config_text(port, fake_upstream.url))
        process.wait(20)
        _, err = process.communicate()
    assert process.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err.decode()


def test_local_model_missing_extra_is_named(monkeypatch):
    monkeypatch.setattr(local_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(local_model.LocalModelError, match=r"perg-proxy\[local\]"):
        local_model.command("127.0.0.1", 1)


def test_local_model_file_is_found_inside_the_package():
    try:
        path = local_model.gguf_path()
    except local_model.LocalModelError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(error))
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


def test_makefile_and_ci_call_the_documented_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_eval_logging_writes_to_the_stderr_of_the_moment(monkeypatch) -> None:
    """`eval` logs to stderr as it is when a line is written: a caller that swapped it and closed
    the old one (a redirect, a test's capture) leaves no logger writing to a closed file."""
    import io

    import structlog

    from proxy.config import LoggingSettings
    from proxy.logs import configure_logging, current_stderr

    first, second = io.StringIO(), io.StringIO()
    saved = structlog.get_config()
    monkeypatch.setattr(sys, "stderr", first)
    try:
        configure_logging(LoggingSettings(level="info", format="console"), stream=current_stderr())
        logger = structlog.get_logger("perg.test")
        logger.info("one")
        first.close()
        monkeypatch.setattr(sys, "stderr", second)
        logger.info("two")  # the same (cached) logger
    finally:
        structlog.configure(**saved)
    assert "two" in second.getvalue()

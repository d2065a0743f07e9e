"""Running `perg-proxy serve` as a real child process in tests (stopped by its own PID)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2

from tests.conftest import ADMIN_KEY, CLIENT_KEY


def write_config(tmp_path: Path, port: int, upstream: str, extra: str = "", name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        f"""
server: {{host: 127.0.0.1, port: {port}, pre_stop_seconds: 1.0, grace_seconds: 10}}
upstreams: [{{name: main, base_url: "{upstream}"}}]
personalization: {{default_strategy: "off"}}
auth: {{client_keys: [{CLIENT_KEY}], admin_key: {ADMIN_KEY}}}
{extra}
"""
    )
    return path


class Proxy:
    """`perg-proxy serve` as a child process, stopped by its own PID."""

    def __init__(self, config: Path, port: int, *args: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.out = config.with_suffix(".log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config), *args], stdout=self.out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, config.with_suffix(".log").read_text()
            try:
                if httpx2.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("the proxy did not become ready")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.out.close()
        return self.process.returncode

    def events(self) -> list[dict]:
        lines = Path(self.out.name).read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

"""Portkey's open-source gateway (npm `@portkey-ai/gateway`) under node, routed to the fake upstream.

bench/gateways/portkey/ holds a package.json and package-lock.json that pin the gateway and
override `@hono/node-server` to 1.13.5 (newer versions break its streaming); `npm ci` installs
them there once. Requests pick the upstream with Portkey's headers: `x-portkey-provider: openai`
and `x-portkey-custom-host: <fake upstream>/v1`; the bearer key goes to the upstream as is (the
open-source gateway has no keys of its own). loopback.mjs makes it listen on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import free_port, pinned
from bench.gateways import Processes, Target, wait_ready

HERE = Path(__file__).resolve().parent / "portkey"
MODULES = HERE / "node_modules"
MARKER = MODULES / ".perg-bench-installed"
SERVER = MODULES / "@portkey-ai" / "gateway" / "build" / "start-server.js"


def ensure_modules() -> None:
    """`npm ci` from the lock file once; again when the lock file changes."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise RuntimeError("Portkey's gateway needs node and npm on PATH")
    wanted = hashlib.sha256((HERE / "package-lock.json").read_bytes()).hexdigest()
    if MARKER.exists() and MARKER.read_text() == wanted:
        return
    print(f"installing Portkey's gateway into {MODULES} (once) ...", file=sys.stderr, flush=True)
    subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE, check=True, timeout=900)
    MARKER.write_text(wanted)


def package_version(name: str) -> str:
    return json.loads((MODULES / name / "package.json").read_text())["version"]


def node_version() -> str:
    return subprocess.run(["node", "--version"], capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def start(processes: Processes, upstream_port: int, workdir: Path, cpu: int = 0) -> Target:
    ensure_modules()
    port = free_port()
    log_path = workdir / "portkey.log"
    argv = ["node", "--import", (HERE / "loopback.mjs").as_uri(), str(SERVER), f"--port={port}", "--headless"]
    env = {**os.environ, "NODE_ENV": "production"}
    with open(log_path, "wb") as log:
        process = processes.add(subprocess.Popen(pinned(cpu, argv), cwd=workdir, stdout=log, stderr=log, env=env))
    wait_ready(process, port, log_path, timeout=60)
    headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": f"http://127.0.0.1:{upstream_port}/v1"}
    return Target("Portkey", port, process, "sk-up", headers)

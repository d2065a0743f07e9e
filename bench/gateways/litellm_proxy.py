"""LiteLLM's proxy in a virtualenv of its own (bench/.venvs/litellm), routed to the fake upstream.

The config has one `model_list` entry, `echo` -> `openai/echo` at the fake upstream's
`api_base` (LiteLLM's OpenAI-compatible provider), and a random master key (LiteLLM refuses to
start without one). Logging is minimized: `LITELLM_LOG=ERROR` (which also silences uvicorn's
access log) and the bundled model cost map instead of a download at start.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT, free_port, pinned
from bench.gateways import Processes, Target, wait_ready

REQUIREMENTS = Path(__file__).resolve().parent / "litellm" / "requirements.txt"
VENV = ROOT / "bench" / ".venvs" / "litellm"
MARKER = VENV / ".perg-bench-installed"


def ensure_venv() -> Path:
    """Create the virtualenv and install the pinned LiteLLM once; reinstall when the pin changes."""
    wanted = REQUIREMENTS.read_text()
    if MARKER.exists() and MARKER.read_text() == wanted:
        return VENV / "bin"
    print(f"installing LiteLLM into {VENV} (once) ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=300)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True, timeout=1800)
    MARKER.write_text(wanted)
    return VENV / "bin"


def version() -> str:
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    return subprocess.run([str(VENV / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def config(upstream_port: int, master_key: str) -> str:
    return f"""
model_list:
  - model_name: echo
    litellm_params:
      model: openai/echo
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: sk-up
general_settings:
  master_key: {master_key}
"""


def start(processes: Processes, upstream_port: int, workdir: Path, cpu: int = 0) -> Target:
    bindir = ensure_venv()
    port, master_key = free_port(), "sk-bench-" + secrets.token_hex(24)
    path = workdir / "litellm.yaml"
    path.write_text(config(upstream_port, master_key))
    log_path = workdir / "litellm.log"
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    argv = [str(bindir / "litellm"), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log:
        process = processes.add(subprocess.Popen(pinned(cpu, argv), cwd=workdir, stdout=log, stderr=log, env=env))
    wait_ready(process, port, log_path, timeout=180)
    return Target("LiteLLM", port, process, master_key)

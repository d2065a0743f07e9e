"""Running the Node clients of tests/node/ (Vercel AI SDK, openai Node SDK) against a proxy.

`tests/node/clients.mjs <scenario>` takes the proxy's URL, key, model, prompt and preferences from
its environment and prints one JSON object; `run_node` runs it with a timeout and returns that
object. The packages come from tests/node/package-lock.json (`npm ci` in .ci/run).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT = NODE_DIR / "clients.mjs"
PACKAGES = ("ai", "@ai-sdk/openai", "openai", "zod")


def node_or_skip() -> str:
    """The node binary, with the packages installed; else the test is skipped saying why (under CI
    a missing package is a failure: .ci/run installs them)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the Node client tests need Node.js 20 or later)")
    missing = [name for name in PACKAGES if not (NODE_DIR / "node_modules" / name / "package.json").exists()]
    if missing:
        message = f"the Node packages {', '.join(missing)} are not installed: run `npm ci` in {NODE_DIR}"
        if os.environ.get("CI"):
            raise AssertionError(message)
        pytest.skip(message)
    return node


def run_node(
    scenario: str,
    base_url: str,
    api_key: str,
    model: str,
    prompt: str,
    preferences: list[str] | None = None,
    user: str | None = None,
    max_tokens: int | None = None,
    schema: str | None = None,
    store: bool | None = None,
    timeout: float = 120,
) -> dict[str, Any]:
    """Run one scenario and return what it printed; a client error comes back as {"error": …}."""
    node = node_or_skip()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PERG_BASE_URL": base_url,
        "PERG_API_KEY": api_key,
        "PERG_MODEL": model,
        "PERG_PROMPT": prompt,
    }
    if preferences is not None:
        env["PERG_PREFERENCES"] = json.dumps(preferences, ensure_ascii=False)
    if user is not None:
        env["PERG_USER"] = user
    if max_tokens is not None:
        env["PERG_MAX_TOKENS"] = str(max_tokens)
    if schema is not None:
        env["PERG_SCHEMA"] = schema
    if store is not None:
        env["PERG_STORE"] = "true" if store else "false"
    done = subprocess.run(
        [node, str(SCRIPT), scenario], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"{scenario} printed nothing (exit {done.returncode}); stderr:\n{done.stderr}"
    result = json.loads(lines[-1])
    assert (done.returncode == 0) == ("error" not in result), (done.returncode, result, done.stderr)
    return result


def b64_preferences(preferences: list[str]) -> str:
    """X-Perg-Preferences-B64 as the Node script sends it: base64url of the UTF-8 JSON, unpadded."""
    return base64.urlsafe_b64encode(json.dumps(preferences, ensure_ascii=False).encode()).decode().rstrip("=")

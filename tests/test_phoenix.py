"""The proxy's traces in a real Arize Phoenix (docs/tracing.md).

Phoenix (`arize-phoenix` from PyPI, about 850 MB) lives in its own virtual environment, kept out of
the project's:

    python3 -m venv .venv-phoenix && .venv-phoenix/bin/pip install arize-phoenix

(`.ci/run` does this). The test uses `PERG_TEST_PHOENIX_PYTHON`, else `.venv-phoenix/bin/python`,
and is skipped, saying so, when neither exists. It starts Phoenix on 127.0.0.1 with its own working
directory and every outbound feature off (no telemetry, no external resources, no assistant, no
MCP), sends it the proxy's traces over OTLP/HTTP, reads them back from Phoenix's REST API, and
stops Phoenix by its PID.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from proxy import telemetry
from tests.conftest import CLIENT_KEY, ROOT, free_port, wait_for

STYLE = "Answer in the style of a pirate."
READY_SECONDS = 180  # 12-25 s on an idle 2-core machine; much more when it is loaded


def phoenix_python() -> Path | None:
    configured = os.environ.get("PERG_TEST_PHOENIX_PYTHON")
    path = Path(configured) if configured else ROOT / ".venv-phoenix" / "bin" / "python"
    return path if path.exists() else None


class Phoenix:
    """`python -m phoenix.server.main serve` on loopback, stopped by its own PID."""

    def __init__(self, python: Path, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {key: value for key, value in os.environ.items() if not key.startswith(("PHOENIX_", "OTEL_"))}
        env |= {
            "PHOENIX_WORKING_DIR": str(workdir),
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(self.port),
            "PHOENIX_GRPC_PORT": str(free_port()),
            "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
            "PHOENIX_TELEMETRY_ENABLED": "false",
            "PHOENIX_DISABLE_AGENT_ASSISTANT": "true",
            "PHOENIX_ENABLE_MCP_SERVER": "false",
        }
        self.log = (workdir / "phoenix.log").open("wb")
        self.process = subprocess.Popen(
            [str(python), "-m", "phoenix.server.main", "serve"], cwd=workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            assert self.process.poll() is None, Path(self.log.name).read_text()[-3000:]
            try:
                if httpx2.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"Phoenix was not ready within {READY_SECONDS} s: {Path(self.log.name).read_text()[-3000:]}")

    def spans(self, project: str, **filters: str) -> list[dict[str, Any]]:
        response = httpx2.get(f"{self.url}/v1/projects/{project}/spans", params={"limit": "200", **filters}, timeout=10)
        if response.status_code == 404:  # the project appears with its first span
            return []
        response.raise_for_status()
        return response.json()["data"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    python = phoenix_python()
    if python is None:
        pytest.skip(
            "Arize Phoenix is not installed: create it with `python3 -m venv .venv-phoenix && "
            ".venv-phoenix/bin/pip install arize-phoenix` (.ci/run does), or set PERG_TEST_PHOENIX_PYTHON to its python"
        )
    server = Phoenix(python, tmp_path_factory.mktemp("phoenix"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(600)
def test_phoenix_shows_a_personalized_request_as_one_trace_with_its_stages_and_verdicts(phoenix, start_proxy):
    project = f"perg-{uuid.uuid4().hex[:8]}"
    traces = {
        "enabled": True,
        "endpoint": f"{phoenix.url}/v1/traces",
        "resource_attributes": {"openinference.project.name": project},
    }
    monitor = {"enabled": True, "sample_rate": 1.0, "workers": 1}
    proxy = start_proxy(personalization={"default_strategy": "pref_aligner"}, monitor=monitor, telemetry={"traces": traces})
    body = {"model": "echo", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    body["personalization"] = {"preferences": [STYLE]}
    response = httpx2.post(f"{proxy.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=30)
    assert response.status_code == 200 and response.headers["x-perg-aligned"] == "true"
    served = {"model": "echo", "strategy": "pref_aligner", "role": "served", "relevance": "relevant"}
    wait_for(lambda: proxy.metric("perg_monitor_judged_total", served), timeout=30)
    tracing = telemetry.active()
    assert tracing is not None

    def arrived() -> list[dict[str, Any]] | None:
        tracing.force_flush(timeout_seconds=5)
        spans = phoenix.spans(project)
        names = {s["name"] for s in spans}
        return spans if {"perg.monitor.evaluate", "POST /v1/chat/completions"} <= names else None

    spans = wait_for(arrived, timeout=60, interval=0.5)
    (request,) = [s for s in spans if s["name"] == "POST /v1/chat/completions"]
    trace_id = request["context"]["trace_id"]
    in_trace = phoenix.spans(project, trace_id=trace_id)
    assert {s["context"]["span_id"] for s in in_trace} == {s["context"]["span_id"] for s in spans}, "one trace"
    assert request["parent_id"] is None
    a = request["attributes"]
    assert a["perg.strategy"] == "pref_aligner" and a["perg.aligned"] == "true" and a["perg.outcome"] == "aligned"
    assert a["perg.request_id"] == response.headers["x-request-id"]

    request_id = request["context"]["span_id"]
    stages = {s["attributes"]["perg.stage"]: s for s in in_trace if s["parent_id"] == request_id and s["name"] == "chat echo"}
    assert set(stages) == {"stage1", "gate", "stage2"}
    for stage, span in stages.items():
        a = span["attributes"]
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai", stage
        assert a["gen_ai.request.model"] == "echo" and a["gen_ai.response.model"] == "echo"
        assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
        assert a["gen_ai.response.finish_reasons"] == ["stop"]
        assert span["status_code"] != "ERROR"

    (evaluation,) = [s for s in in_trace if s["name"] == "perg.monitor.evaluate"]
    assert evaluation["parent_id"] == request_id
    judges = [s for s in in_trace if s["parent_id"] == evaluation["context"]["span_id"]]
    assert judges and all(s["name"] == "chat echo" and s["attributes"]["perg.stage"] == "judge" for s in judges)
    verdicts = {
        e["attributes"]["gen_ai.evaluation.name"]: e["attributes"] for e in evaluation["events"] if e["name"] == "gen_ai.evaluation.result"
    }
    assert verdicts["perg.consistency"]["gen_ai.evaluation.score.label"] == "consistent"
    assert verdicts["perg.follow"]["gen_ai.evaluation.score.value"] == 4.0
    assert verdicts["perg.robustness"]["gen_ai.evaluation.score.label"] == "robust"

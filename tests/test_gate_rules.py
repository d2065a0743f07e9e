"""A gate you can trust, and honest headers: the start-up probe of each upstream's structured-output
style, no gate call when the answer is certain to be served unchanged, failing open counted, the
overhead of a stream that went `pending`, and the draft only with `return_draft`."""

from __future__ import annotations

import httpx2
import orjson
import pytest

from tests.conftest import CLIENT_KEY, wait_for

STYLE = "Answer in the style of a pirate."
QUESTION = "What is the capital of France?"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]


def post(proxy, body: dict, **kwargs) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
    return httpx2.post(f"{proxy.base_url}/chat/completions", content=orjson.dumps(body), headers=headers, timeout=30, **kwargs)


def personalized(**fields) -> dict:
    return {
        "model": "echo", "messages": [{"role": "user", "content": QUESTION}],
        "personalization": {"preferences": [STYLE], **fields.pop("extension", {})}, **fields,
    }  # fmt: skip


def probe_result(proxy) -> dict:
    return httpx2.get(proxy.url + "/readyz", timeout=10).json()["structured_output"]["main"]


def test_the_probe_finds_a_working_style(start_proxy, fake_upstream):
    proxy = start_proxy(personalization={"default_strategy": "pref_aligner"})
    assert wait_for(lambda: probe_result(proxy)["result"] != "pending")
    assert probe_result(proxy) == {"style": "json_object_schema", "result": "ok"}
    (probe,) = [r.json for r in fake_upstream.probes if r.path == "/v1/chat/completions"]
    assert probe["response_format"]["type"] == "json_object" and probe["max_tokens"] <= 16
    assert not fake_upstream.chat_bodies()  # the probe is not a client request: kept apart


def test_a_rejected_style_is_a_loud_warning_naming_the_key(start_proxy, fake_upstream, capsys):
    fake_upstream.rejected_styles.add("json_schema")
    upstreams = [{"name": "main", "base_url": fake_upstream.url, "structured_output": "json_schema", "models": ["echo"]}]
    proxy = start_proxy(upstreams=upstreams, personalization={"default_strategy": "pref_aligner"})
    assert wait_for(lambda: probe_result(proxy)["result"] != "pending")
    assert probe_result(proxy) == {"style": "json_schema", "result": "mismatch", "suggested": "json_object_schema"}
    assert httpx2.get(proxy.url + "/readyz", timeout=10).status_code == 200  # the proxy still serves
    logged = capsys.readouterr().out
    assert "structured_output_mismatch" in logged and "upstreams[name=main].structured_output" in logged
    # and the gate, asked in the rejected style, fails open: counted, every preference kept
    response = post(proxy, personalized())
    assert response.headers["x-perg-aligned"] == "true"
    assert proxy.metric("perg_gate_outcomes_total", {"outcome": "failed_open"}) == 1


def test_an_unreachable_upstream_is_not_called_a_mismatch(start_proxy, fake_upstream):
    fake_upstream.rejected_styles.update({"json_object_schema", "none"})
    proxy = start_proxy(personalization={"default_strategy": "pref_aligner"})
    assert wait_for(lambda: probe_result(proxy)["result"] != "pending")
    assert probe_result(proxy)["result"].startswith("unreachable")


@pytest.mark.parametrize(
    "fields",
    [
        {"response_format": {"type": "json_object"}},
        {"tools": TOOLS, "tool_choice": "required"},
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    ],
    ids=["response_format", "tool_choice required", "tool_choice named"],
)
def test_no_gate_call_when_the_answer_is_served_unchanged(start_proxy, fake_upstream, fields):
    proxy = start_proxy(personalization={"default_strategy": "pref_aligner"})
    response = post(proxy, personalized(**fields, model="tool-call" if "tools" in fields else "echo"))
    assert response.status_code == 200
    assert response.headers["x-perg-aligned"] == "false"
    assert not fake_upstream.chat_bodies("gate") and not fake_upstream.chat_bodies("aligner")


def test_a_tool_offered_but_not_forced_still_goes_through_the_gate(start_proxy, fake_upstream):
    proxy = start_proxy(personalization={"default_strategy": "pref_aligner"})
    assert post(proxy, personalized(tools=TOOLS, tool_choice="auto")).status_code == 200
    assert len(fake_upstream.chat_bodies("gate")) == 1


def test_a_pending_stream_counts_only_the_proxy_s_own_time(start_proxy, fake_upstream):
    """Stage 1 takes 2.5 s, the heartbeat goes out after 1 s: the headers leave while stage 1 is
    still running, and that second of waiting is not the proxy's time."""
    proxy = start_proxy(personalization={"default_strategy": "pref_aligner"}, server={"heartbeat_seconds": 1.0})
    body = {**personalized(model="slow-2500"), "stream": True}
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
    with httpx2.stream("POST", f"{proxy.base_url}/chat/completions", content=orjson.dumps(body), headers=headers, timeout=30) as response:
        assert response.headers["x-perg-aligned"] == "pending"
        overhead = float(response.headers["x-perg-overhead-ms"])
        events = [orjson.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert overhead < 500, overhead  # the heartbeat's 1000 ms of waiting on stage 1 are not in it
    final = events[-1]["personalization"]
    assert final["aligned"] == "true" and "draft" not in final and "choices" not in final


def test_the_draft_only_with_return_draft(start_proxy, fake_upstream):
    proxy = start_proxy(personalization={"default_strategy": "pref_aligner"})
    plain = post(proxy, personalized()).json()["personalization"]
    assert "draft" not in plain and "choices" not in plain and plain["aligned"] == "true"
    asked = post(proxy, personalized(extension={"return_draft": True})).json()["personalization"]
    assert asked["draft"] == QUESTION and asked["choices"][0]["draft"] == QUESTION


def test_usage_is_the_sum_and_personalization_usage_its_parts(start_proxy, fake_upstream):
    proxy = start_proxy(personalization={"default_strategy": "pref_aligner"})
    data = post(proxy, personalized()).json()
    parts = data["personalization"]["usage"]
    assert parts["verify"] is None and all(parts[key]["total_tokens"] > 0 for key in ("stage1", "gate", "stage2"))
    stage1 = [r for r in fake_upstream.received if r.role == "chat"]
    assert parts["stage1"]["prompt_tokens"] == len(QUESTION.split()) == len(stage1[0].json["messages"][0]["content"].split())
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert data["usage"][key] == sum(part[key] for part in parts.values() if part)

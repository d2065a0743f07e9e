"""OpenTelemetry traces (proxy/telemetry.py) on the fake upstream, read from the SDK's in-memory
exporter: span structure and GenAI attributes, content capture off and on, W3C `traceparent` in
and upstream, the monitor's verdicts as evaluation events, and exporting that fails or overflows
without touching a request. The same traces against a real Arize Phoenix: test_phoenix.py."""

from __future__ import annotations

import threading
import time

import httpx2
import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from proxy import telemetry
from tests.conftest import ADMIN_KEY, CLIENT_KEY, free_port, wait_for

STYLE = "Answer in the style of a pirate."
QUERY = "What is the capital of France?"
CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """Every span the proxy exports, in memory instead of over OTLP."""
    exporter = InMemorySpanExporter()
    monkeypatch.setattr(telemetry, "OTLPSpanExporter", lambda **_: exporter)
    return exporter


def traced(start_proxy, strategy="pref_aligner", monitor=None, **traces):
    sections = {"personalization": {"default_strategy": strategy}, "telemetry": {"traces": {"enabled": True, **traces}}}
    if monitor is not None:
        sections["monitor"] = {"enabled": True, "sample_rate": 1.0, "workers": 1, **monitor}
    return start_proxy(**sections)


def chat(proxy, prefs=(STYLE,), stream=False, headers=None, **extra) -> httpx2.Response:
    body = {"model": "echo", "messages": [{"role": "user", "content": QUERY}], "stream": stream, **extra}
    if prefs:
        body["personalization"] = {"preferences": list(prefs)}
    return httpx2.post(f"{proxy.base_url}/chat/completions", json=body, headers={**CLIENT, **(headers or {})}, timeout=30)


def finished(exporter: InMemorySpanExporter, requests: int = 1) -> list[ReadableSpan]:
    """The spans exported once `requests` request spans have ended (a request's span ends in the
    middleware, just after the client has read the last byte of the response)."""
    tracing = telemetry.active()
    assert tracing is not None

    def flushed() -> list[ReadableSpan] | None:
        assert tracing.force_flush()
        found = list(exporter.get_finished_spans())
        return found if sum(s.kind is SpanKind.SERVER for s in found) >= requests else None

    return wait_for(flushed, timeout=10)


def server_span(found: list[ReadableSpan]) -> ReadableSpan:
    (span,) = [s for s in found if s.kind is SpanKind.SERVER and s.name == "POST /v1/chat/completions"]
    return span


def children(found: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in found if s.parent is not None and s.parent.span_id == parent.context.span_id]


def test_a_personalized_request_is_one_trace_with_a_chat_span_per_stage(start_proxy, spans):
    proxy = traced(start_proxy)
    response = chat(proxy)
    assert response.status_code == 200 and response.headers["x-perg-aligned"] == "true"
    found = finished(spans)
    request = server_span(found)
    assert request.parent is None
    assert {s.context.trace_id for s in found} == {request.context.trace_id}
    attributes = request.attributes or {}
    assert attributes["perg.strategy"] == "pref_aligner" and attributes["perg.aligned"] == "true"
    assert attributes["perg.outcome"] == "aligned" and attributes["perg.preference_source"] == "request"
    assert attributes["http.response.status_code"] == 200 and attributes["gen_ai.request.model"] == "echo"
    assert attributes["perg.request_id"] == response.headers["x-request-id"]
    calls = {s.attributes["perg.stage"]: s for s in children(found, request)}
    assert set(calls) == {"stage1", "gate", "stage2"}
    for stage, span in calls.items():
        a = span.attributes or {}
        assert span.name == "chat echo" and span.kind is SpanKind.CLIENT, stage
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
        assert a["gen_ai.request.model"] == "echo" and a["gen_ai.response.model"] == "echo"
        assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
        assert tuple(a["gen_ai.response.finish_reasons"]) == ("stop",)
        assert a["server.address"] == "127.0.0.1" and a["perg.upstream"] == "main"
        assert not {"gen_ai.input.messages", "gen_ai.output.messages"} & set(a), "content is off by default"


def test_the_verifier_is_a_chat_span_of_the_request(start_proxy, spans):
    sections = {"default_strategy": "pref_aligner", "aligner": {"verify": "llm"}}
    proxy = start_proxy(personalization=sections, telemetry={"traces": {"enabled": True}})
    assert chat(proxy).status_code == 200
    found = finished(spans)
    stages = {s.attributes["perg.stage"]: s for s in children(found, server_span(found))}
    assert set(stages) == {"stage1", "gate", "stage2", "verify"}
    assert stages["verify"].name == "chat echo" and stages["verify"].attributes["gen_ai.operation.name"] == "chat"


def test_content_is_captured_only_when_allowed(start_proxy, spans):
    proxy = traced(start_proxy, capture_content=True)
    assert chat(proxy).status_code == 200
    found = finished(spans)
    stage1 = next(s for s in found if (s.attributes or {}).get("perg.stage") == "stage1")
    inputs = orjson.loads(stage1.attributes["gen_ai.input.messages"])
    assert inputs == [{"role": "user", "parts": [{"type": "text", "content": QUERY}]}]
    outputs = orjson.loads(stage1.attributes["gen_ai.output.messages"])
    assert outputs[0]["role"] == "assistant" and QUERY in outputs[0]["parts"][0]["content"]
    assert outputs[0]["finish_reason"] == "stop"
    stage2 = next(s for s in found if (s.attributes or {}).get("perg.stage") == "stage2")
    assert STYLE in stage2.attributes["gen_ai.input.messages"]


def test_a_streamed_rewrite_records_its_stream(start_proxy, spans):
    proxy = traced(start_proxy, capture_content=True)
    response = chat(proxy, stream=True)
    assert response.status_code == 200 and response.text.rstrip().endswith("data: [DONE]")
    found = finished(spans)
    stage2 = next(s for s in found if (s.attributes or {}).get("perg.stage") == "stage2")
    a = stage2.attributes or {}
    assert a["gen_ai.response.model"] == "echo" and tuple(a["gen_ai.response.finish_reasons"]) == ("stop",)
    assert orjson.loads(a["gen_ai.output.messages"])[0]["parts"][0]["content"]
    assert (server_span(found).attributes or {})["perg.stream"] is True


def test_the_clients_traceparent_is_the_parent_and_each_call_sends_its_own(start_proxy, spans, fake_upstream):
    proxy = traced(start_proxy)
    assert chat(proxy, headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}).status_code == 200
    found = finished(spans)
    request = server_span(found)
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert request.parent is not None and format(request.parent.span_id, "016x") == PARENT_ID and request.parent.is_remote
    calls = {format(s.context.span_id, "016x"): s for s in children(found, request)}
    sent = [r.headers.get("traceparent") or r.headers.get("Traceparent") for r in fake_upstream.received]
    assert len(sent) == 3 and all(value is not None for value in sent)
    for value in sent:
        _, trace_id, span_id, flags = value.split("-")
        assert trace_id == TRACE_ID and span_id in calls and flags == "01"


def test_pass_through_replaces_the_clients_traceparent_with_its_chat_span(start_proxy, spans, fake_upstream):
    proxy = traced(start_proxy, strategy="off")
    assert chat(proxy, prefs=(), headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}).status_code == 200
    found = finished(spans)
    (call,) = children(found, server_span(found))
    assert call.name == "chat echo" and call.attributes["perg.stage"] == "forward"
    assert call.attributes["gen_ai.usage.output_tokens"] > 0
    (received,) = fake_upstream.received
    assert received.headers["traceparent"] == f"00-{TRACE_ID}-{format(call.context.span_id, '016x')}-01"


def test_other_pass_through_routes_are_http_client_spans(start_proxy, spans):
    proxy = traced(start_proxy, strategy="off")
    response = httpx2.post(f"{proxy.base_url}/embeddings", json={"model": "echo", "input": "hi"}, headers=CLIENT, timeout=30)
    assert response.status_code == 200
    response = httpx2.get(f"{proxy.base_url}/files/file-1/content", headers=CLIENT, timeout=30)
    assert response.status_code == 200
    found = finished(spans, requests=2)
    by_route = {s.attributes["http.route"]: s for s in found if s.kind is SpanKind.SERVER}
    assert set(by_route) == {"/v1/{path}"}
    calls = sorted((s for s in found if s.kind is SpanKind.CLIENT), key=lambda s: s.name)
    assert [s.name for s in calls] == ["GET", "embeddings"]
    assert calls[0].attributes["url.path"] == "/files/file-1/content" and calls[0].attributes["http.request.method"] == "GET"
    assert calls[1].attributes["gen_ai.operation.name"] == "embeddings"


def test_without_tracing_no_span_and_the_clients_traceparent_passes_untouched(start_proxy, spans, fake_upstream):
    proxy = start_proxy()
    header = f"00-{TRACE_ID}-{PARENT_ID}-01"
    assert chat(proxy, prefs=(), headers={"traceparent": header}).status_code == 200
    assert telemetry.active() is None and spans.get_finished_spans() == ()
    assert fake_upstream.received[0].headers["traceparent"] == header


def test_sample_ratio_and_the_clients_sampled_flag_decide_what_is_recorded(start_proxy, spans, fake_upstream):
    proxy = traced(start_proxy, sample_ratio=0.0)
    assert chat(proxy).status_code == 200  # no parent: the ratio (0) decides
    assert chat(proxy, headers={"traceparent": f"00-{'1' * 32}-{PARENT_ID}-00"}).status_code == 200
    assert chat(proxy, headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}).status_code == 200  # sampled by the client
    found = finished(spans)
    assert {format(s.context.trace_id, "032x") for s in found} == {TRACE_ID}
    assert sorted(s.attributes.get("perg.stage", "request") for s in found) == ["gate", "request", "stage1", "stage2"]
    sent = [r.headers["traceparent"] for r in fake_upstream.received]  # every call carries one, sampled or not
    sampled = [value for value in sent if int(value.rsplit("-", 1)[1], 16) & 1]
    assert len(sent) == 9 and len(sampled) == 3 and all(TRACE_ID in value for value in sampled)


def test_the_profile_lookup_is_a_search_memory_span(start_proxy, spans):
    proxy = traced(start_proxy)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert httpx2.put(f"{proxy.url}/perg/profiles/alice", json={"preferences": [STYLE]}, headers=admin).status_code == 200
    assert chat(proxy, prefs=(), user="alice").status_code == 200
    found = finished(spans, requests=2)  # the PUT has a request span too: wait for the chat's as well
    request = server_span(found)
    (memory,) = [s for s in children(found, request) if s.name.startswith("search_memory")]
    assert memory.attributes["gen_ai.operation.name"] == "search_memory"
    assert memory.attributes["gen_ai.memory.store.name"] == "perg-profiles"
    assert request.attributes["perg.preference_source"] == "profile" and request.attributes["perg.preferences"] == 1


def test_the_monitors_verdicts_join_the_requests_trace_as_evaluation_events(start_proxy, spans):
    proxy = traced(start_proxy, monitor={}, capture_content=True)
    assert chat(proxy).status_code == 200
    wait_for(
        lambda: proxy.metric(
            "perg_monitor_judged_total", {"model": "echo", "strategy": "pref_aligner", "role": "served", "relevance": "relevant"}
        )
    )
    found = wait_for(lambda: [s for s in finished(spans) if s.name == "perg.monitor.evaluate"] and finished(spans))
    request = server_span(found)
    (evaluation,) = [s for s in found if s.name == "perg.monitor.evaluate"]
    assert evaluation.parent is not None and evaluation.parent.span_id == request.context.span_id
    assert [link.context.span_id for link in evaluation.links] == [request.context.span_id]
    judges = children(found, evaluation)
    assert judges and all(s.name == "chat echo" and s.attributes["perg.stage"] == "judge" for s in judges)
    events = {e.attributes["gen_ai.evaluation.name"]: e.attributes for e in evaluation.events if e.name == "gen_ai.evaluation.result"}
    assert events["perg.consistency"]["gen_ai.evaluation.score.label"] == "consistent"
    assert events["perg.consistency"]["gen_ai.evaluation.explanation"] == "same facts"
    assert events["perg.follow"]["gen_ai.evaluation.score.value"] == 4.0
    assert events["perg.follow"]["gen_ai.evaluation.score.label"] == "followed"
    assert events["perg.robustness"]["gen_ai.evaluation.score.label"] == "robust"
    assert all(e["perg.role"] == "served" for e in events.values())
    assert evaluation.attributes["perg.served.broken"] is False


def test_a_dead_collector_never_fails_a_request_and_its_losses_are_counted(start_proxy):
    port = free_port()  # nothing listens here
    proxy = traced(start_proxy, endpoint=f"http://127.0.0.1:{port}/v1/traces", export_timeout_seconds=1)
    for _ in range(5):
        response = chat(proxy)
        assert response.status_code == 200 and response.headers["x-perg-aligned"] == "true"
    tracing = telemetry.active()
    assert tracing is not None
    tracing.force_flush(timeout_seconds=10)
    assert wait_for(lambda: proxy.metric("perg_trace_spans_dropped_total", {"reason": "export_failed"}) >= 20, timeout=15)


class StuckExporter(InMemorySpanExporter):
    """A collector that takes forever: its first export blocks until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def export(self, spans):  # type: ignore[no-untyped-def]
        self.release.wait(20)
        return SpanExportResult.SUCCESS


def test_a_full_export_queue_drops_spans_and_counts_them_not_requests(start_proxy, monkeypatch):
    exporter = StuckExporter()
    monkeypatch.setattr(telemetry, "OTLPSpanExporter", lambda **_: exporter)
    proxy = traced(start_proxy, max_queue_size=2)
    try:
        started = time.monotonic()
        for _ in range(4):
            assert chat(proxy).status_code == 200
        assert time.monotonic() - started < 20, "requests waited for the stuck exporter"
        assert proxy.metric("perg_trace_spans_dropped_total", {"reason": "queue_full"}) > 0
    finally:
        exporter.release.set()


def test_traces_settings_are_strict():
    from proxy.config import ConfigError, parse_settings

    base = {"upstreams": [{"name": "main", "base_url": "http://127.0.0.1:1/v1"}]}
    with pytest.raises(ConfigError, match=r"telemetry\.traces\.sample_ratio"):
        parse_settings({**base, "telemetry": {"traces": {"sample_ratio": 2}}})
    with pytest.raises(ConfigError, match=r"telemetry\.traces\.endpoint"):
        parse_settings({**base, "telemetry": {"traces": {"endpoint": "127.0.0.1:4318"}}})
    with pytest.raises(ConfigError, match=r"telemetry\.traces\.colour"):
        parse_settings({**base, "telemetry": {"traces": {"colour": "red"}}})
    assert parse_settings(base).telemetry.traces.enabled is False


@pytest.mark.local_model
def test_on_the_real_local_model_each_upstream_call_is_a_chat_span(start_proxy, spans, local_model):
    """The same trace on the real SmolLM2 behind llama_cpp.server, streamed and not (the model is
    weak: only the spans' structure and attributes are asserted, never the answer)."""
    from proxy.local_model import MODEL_ALIAS

    proxy = start_proxy(
        upstreams=[{"name": "local", "base_url": local_model.base_url, "structured_output": "json_object_schema"}],
        personalization={"default_strategy": "pref_aligner"},
        server={"heartbeat_seconds": 300},
        telemetry={"traces": {"enabled": True}},
    )
    for stream in (False, True):
        body = {"model": MODEL_ALIAS, "messages": [{"role": "user", "content": QUERY}], "max_tokens": 40, "temperature": 0, "seed": 3}
        body |= {"stream": stream, "personalization": {"preferences": [STYLE]}}
        response = httpx2.post(f"{proxy.base_url}/chat/completions", json=body, headers=CLIENT, timeout=300)
        assert response.status_code == 200, response.text
    found = finished(spans, requests=2)
    requests = [s for s in found if s.kind is SpanKind.SERVER]
    assert len(requests) == 2
    for request in requests:
        calls = children(found, request)
        stages = {s.attributes["perg.stage"] for s in calls}
        assert {"stage1", "gate"} <= stages, stages
        assert request.attributes["perg.outcome"] in {"aligned", "skipped", "unchanged", "fallback"}
        for call in calls:
            a = call.attributes or {}
            assert call.name == f"chat {MODEL_ALIAS}" and a["gen_ai.request.model"] == MODEL_ALIAS
            assert a["server.port"] == int(local_model.base_url.rsplit(":", 1)[1].split("/")[0])
            if "error.type" not in a:
                assert a["gen_ai.response.model"] and a["gen_ai.response.finish_reasons"]
        stage1 = next(s for s in calls if s.attributes["perg.stage"] == "stage1")
        assert stage1.attributes["gen_ai.usage.output_tokens"] > 0
        assert stage1.attributes["gen_ai.request.max_tokens"] == 40 and stage1.attributes["gen_ai.request.seed"] == 3

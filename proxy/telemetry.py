"""OpenTelemetry traces: the one module that imports OpenTelemetry (STYLE.md, rule 4).

Off by default (`telemetry.traces.enabled`): every hook below then returns at once (one check of a
module global), so traces off cost nothing measurable (docs/benchmark.md). On, over OTLP/HTTP:

- a SERVER span per request (`POST /v1/chat/completions`) with `perg.*` attributes (strategy,
  aligned, outcome, request id, preference source); a client's W3C `traceparent` is its parent;
- a CLIENT span `chat {model}` per upstream call (pass-through, stage 1, gate, stage 2, verifier,
  judges), after the GenAI semantic conventions; its `traceparent` goes upstream with the call;
- a `search_memory` span for the profile lookup;
- the monitor's judging of a sampled request: a `perg.monitor.evaluate` span in the request's trace
  (linked to the request span), the judges' `chat` spans beneath it, and each verdict as a
  `gen_ai.evaluation.result` event on it.

Message content (`gen_ai.input.messages`, `gen_ai.output.messages`, judges' reasons) is recorded
only with `capture_content: true`. The SDK's BatchSpanProcessor exports on its own thread from a
bounded queue; a full queue or a failed export drops spans and counts them
(`perg_trace_spans_dropped_total{reason}`), never touching a request.

The tracer is process-wide (`install()` when the app starts, `uninstall()` at its cleanup): the hooks
sit in code that has no app at hand (the upstream client, the profile lookup, the monitor).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from urllib.parse import urlsplit

import orjson
from multidict import CIMultiDict
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .config import TraceSettings
from .errors import ProxyError
from .metrics import Metrics

ROUTES = {  # traced routes (the metrics' bounded route label) -> the span's route template
    "chat_completions": "/v1/chat/completions",
    "models": "/v1/models",
    "passthrough": "/v1/{path}",
    "profiles": "/perg/profiles",
    "monitor": "/perg/monitor",
}
# the Responses API is a chat operation too in the GenAI conventions' OpenAI section
OPERATIONS = {"/chat/completions": "chat", "/responses": "chat", "/completions": "text_completion", "/embeddings": "embeddings"}
REQUEST_PARAMETERS = {"max_tokens": "max_tokens", "max_completion_tokens": "max_tokens", "temperature": "temperature"}
REQUEST_PARAMETERS |= {"top_p": "top_p", "seed": "seed", "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty"}
SCHEDULE_DELAY_MS = 1000
SHUTDOWN_SECONDS = 5.0
EVALUATION = "gen_ai.evaluation.result"

_active: Tracing | None = None


class CountingExporter(SpanExporter):
    """The OTLP exporter, with every span of a failed export counted as dropped."""

    def __init__(self, inner: SpanExporter, dropped: Any) -> None:
        self._inner = inner
        self._dropped = dropped

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:  # noqa: BLE001 - an exporter that raises has failed like one that reports it
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._dropped.inc(len(spans))
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class BoundedBatchProcessor(BatchSpanProcessor):
    """The SDK's batch processor; a span ended while its queue is full is counted, as the SDK
    drops one then (the queue is a bounded deque)."""

    def __init__(self, exporter: SpanExporter, max_queue_size: int, dropped: Any) -> None:
        batch = min(512, max_queue_size)
        super().__init__(exporter, max_queue_size=max_queue_size, max_export_batch_size=batch, schedule_delay_millis=SCHEDULE_DELAY_MS)
        self._limit = max_queue_size
        self._dropped = dropped

    def on_end(self, span: ReadableSpan) -> None:
        queue = getattr(self._batch_processor, "_queue", None)
        if queue is not None and len(queue) >= self._limit and span.context is not None and span.context.trace_flags.sampled:
            self._dropped.inc()
        super().on_end(span)


class Tracing:
    """The tracer provider, its batch processor and exporter, and what the hooks need."""

    def __init__(self, settings: TraceSettings, metrics: Metrics, exporter: SpanExporter | None = None) -> None:
        self.capture_content = settings.capture_content
        if exporter is None:
            exporter = OTLPSpanExporter(endpoint=settings.endpoint, headers=dict(settings.headers), timeout=settings.export_timeout_seconds)
        dropped = metrics.trace_spans_dropped
        self.processor = BoundedBatchProcessor(
            CountingExporter(exporter, dropped.labels("export_failed")), settings.max_queue_size, dropped.labels("queue_full")
        )
        resource = Resource({"service.name": settings.service_name, **settings.resource_attributes})
        sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
        self.provider = TracerProvider(resource=resource, sampler=sampler, shutdown_on_exit=False)
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("perg-proxy")
        self.propagator = TraceContextTextMapPropagator()

    def force_flush(self, timeout_seconds: float = 5.0) -> bool:
        return self.provider.force_flush(int(timeout_seconds * 1000))

    def shutdown(self) -> None:
        self.provider.shutdown()


def install(settings: TraceSettings, metrics: Metrics, exporter: SpanExporter | None = None) -> Tracing | None:
    """Start tracing for this process when the settings enable it (an `exporter` replaces OTLP in tests)."""
    global _active
    if not settings.enabled:
        return None
    _active = Tracing(settings, metrics, exporter)
    return _active


def active() -> Tracing | None:
    """This process's tracing, when installed (tests flush it)."""
    return _active


async def uninstall(tracing: Tracing | None) -> None:
    """Stop tracing: what is queued is exported on a thread, waited for at most a few seconds."""
    global _active
    if tracing is None:
        return
    if _active is tracing:
        _active = None
    try:
        await asyncio.wait_for(asyncio.to_thread(tracing.shutdown), SHUTDOWN_SECONDS)
    except TimeoutError:
        pass  # the exporter thread finishes on its own; the spans it still holds are lost


# -- the request --------------------------------------------------------------------------------


class RequestScope:
    __slots__ = ("span", "token")

    def __init__(self, span: trace.Span, token: contextvars.Token[otel_context.Context]) -> None:
        self.span = span
        self.token = token


def enter_request(request_id: str, method: str, route: str, headers: Mapping[str, str]) -> RequestScope | None:
    """Start the request's SERVER span (a client's `traceparent` its parent) and make it current."""
    tracing = _active
    if tracing is None or route not in ROUTES:
        return None
    template = ROUTES[route]
    parent = tracing.propagator.extract(headers)
    attributes = {"http.request.method": method, "http.route": template, "perg.request_id": request_id}
    span = tracing.tracer.start_span(f"{method} {template}", context=parent, kind=SpanKind.SERVER, attributes=attributes)
    return RequestScope(span, otel_context.attach(trace.set_span_in_context(span, parent)))


def leave_request(scope: RequestScope | None, turn: Any) -> None:
    """End the request's span with what the request became (a `Turn`)."""
    if scope is None:
        return
    span = scope.span
    try:
        if span.is_recording():
            status = turn.status or 499
            values = {
                "http.response.status_code": status,
                "gen_ai.request.model": turn.model,
                "perg.strategy": turn.strategy,
                "perg.aligned": turn.aligned,
                "perg.stream": turn.stream if turn.model else None,
                "perg.preference_source": turn.preference_source,
                "perg.preferences": len(turn.preferences) if turn.model else None,
                "perg.monitor.sampled": (turn.judge or turn.shadow) if turn.model else None,
                "error.type": turn.error_code,
            }
            span.set_attributes({key: value for key, value in values.items() if value is not None})
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR, turn.error_code or str(status)))
    finally:
        otel_context.detach(scope.token)
        span.end()


def annotate(**values: Any) -> None:
    """Set `perg.<name>` attributes on the current span (the request's, in the pipeline)."""
    if _active is None:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({f"perg.{key}": value for key, value in values.items() if value is not None})


def traceparent() -> str | None:
    """The current span's W3C `traceparent`, for work done later elsewhere (the monitor's job)."""
    tracing = _active
    if tracing is None:
        return None
    carrier: dict[str, str] = {}
    tracing.propagator.inject(carrier)
    return carrier.get("traceparent")


def outgoing(headers: dict[str, str]) -> dict[str, str]:
    """`headers` with the current span's `traceparent` (and `tracestate`) set, for a call upstream."""
    tracing = _active
    if tracing is not None:
        tracing.propagator.inject(headers)
    return headers


# -- upstream calls -----------------------------------------------------------------------------


class CallTrace:
    """An upstream call's tracing; this base does nothing (what the hooks get with tracing off)."""

    __slots__ = ()

    def __enter__(self) -> CallTrace:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace_: object) -> None:
        return None

    def current(self) -> AbstractContextManager[Any]:
        return self

    def inject(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        return headers

    def response(self, data: Any) -> None:
        return None

    def response_body(self, body: bytes) -> None:
        return None

    def chunk(self, event: Any) -> None:
        return None

    def fail(self, error: BaseException) -> None:
        return None


NO_CALL = CallTrace()


class UpstreamCall(CallTrace):
    """One upstream call's CLIENT span (`chat {model}`), ended when the `with` block is left."""

    __slots__ = ("_capture", "_done", "_failed", "_finishes", "_parts", "_propagator", "_streamed", "span")

    def __init__(self, tracing: Tracing, span: trace.Span) -> None:
        self.span = span
        self._capture = tracing.capture_content and span.is_recording()
        self._propagator = tracing.propagator
        self._finishes: list[str] = []
        self._parts: list[str] = []
        self._streamed: dict[str, Any] = {}
        self._failed = False
        self._done = False

    def __enter__(self) -> UpstreamCall:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace_: object) -> None:
        if error is not None:
            self.fail(error)
        if self._streamed:
            self._finish_stream()
        self.span.end()

    @contextmanager
    def current(self) -> Iterator[None]:
        """Make this span current within the block (which must not yield): the call's headers
        then carry its `traceparent` (`outgoing`)."""
        token = otel_context.attach(trace.set_span_in_context(self.span))
        try:
            yield
        finally:
            otel_context.detach(token)

    def inject(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """Pass-through headers with this span's `traceparent` instead of the client's."""
        out = CIMultiDict(headers)
        for name in ("traceparent", "tracestate"):
            out.popall(name, None)
        self._propagator.inject(out, context=trace.set_span_in_context(self.span))
        return out

    def response(self, data: Any) -> None:
        """Record a chat completion's model, id, finish reasons, usage (and content when allowed)."""
        if not isinstance(data, dict) or not self.span.is_recording():
            return
        choices = [choice for choice in data.get("choices") or () if isinstance(choice, dict)]
        finishes = [choice["finish_reason"] for choice in choices if isinstance(choice.get("finish_reason"), str)]
        self.span.set_attributes(_response_attributes(data, finishes))
        if self._capture:
            outputs = [_output_message(choice) for choice in choices]
            self.span.set_attribute("gen_ai.output.messages", orjson.dumps(outputs).decode())

    def response_body(self, body: bytes) -> None:
        if self.span.is_recording():
            try:
                self.response(orjson.loads(body))
            except orjson.JSONDecodeError:
                pass

    def chunk(self, event: Any) -> None:
        """Take note of one `chat.completion.chunk` of a streamed call."""
        if not isinstance(event, dict) or not self.span.is_recording():
            return
        streamed = self._streamed
        for key in ("id", "model"):
            if key not in streamed and isinstance(event.get(key), str):
                streamed[key] = event[key]
        if isinstance(event.get("usage"), dict):
            streamed["usage"] = event["usage"]
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            if isinstance(choice.get("finish_reason"), str):
                self._finishes.append(choice["finish_reason"])
            if self._capture and choice.get("index", 0) == 0:
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str):
                    self._parts.append(content)
        streamed.setdefault("_seen", True)

    def _finish_stream(self) -> None:
        self.span.set_attributes(_response_attributes(self._streamed, self._finishes))
        if self._capture:
            message = {"role": "assistant", "parts": [{"type": "text", "content": "".join(self._parts)}]}
            if self._finishes:
                message["finish_reason"] = self._finishes[0]
            self.span.set_attribute("gen_ai.output.messages", orjson.dumps([message]).decode())

    def fail(self, error: BaseException) -> None:
        if self._failed:
            return
        self._failed = True
        if isinstance(error, asyncio.CancelledError | GeneratorExit):
            self.span.set_attribute("error.type", "cancelled")
            return
        kind = (error.code or error.type) if isinstance(error, ProxyError) else type(error).__qualname__
        self.span.set_attribute("error.type", kind)
        self.span.set_status(Status(StatusCode.ERROR, str(error)[:300]))


def upstream_call(
    upstream: str,
    base_url: str,
    stage: str,
    body: Any = None,
    *,
    path: str = "/chat/completions",
    model: str | None = None,
    method: str = "POST",
) -> CallTrace:
    """The span of one upstream call (a context manager), or `NO_CALL` with tracing off and
    outside a recorded trace (an unsampled request then costs one span, its own)."""
    tracing = _active
    if tracing is None or not trace.get_current_span().is_recording():
        return NO_CALL
    operation = OPERATIONS.get(path)
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        model = body["model"]
    attributes: dict[str, Any] = {"perg.stage": stage, "perg.upstream": upstream, **_server(base_url)}
    if operation is None:
        name = method  # an HTTP client span: `{method}`, the path (unbounded) in an attribute
        attributes |= {"http.request.method": method, "url.path": path}
    else:
        name = f"{operation} {model}" if model else operation
        attributes |= {"gen_ai.operation.name": operation, "gen_ai.provider.name": "openai"}
        if model:
            attributes["gen_ai.request.model"] = model
    span = tracing.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    call = UpstreamCall(tracing, span)
    if isinstance(body, dict) and span.is_recording():
        span.set_attributes(_request_attributes(body))
        if call._capture and isinstance(body.get("messages"), list):
            span.set_attribute("gen_ai.input.messages", orjson.dumps([_input_message(m) for m in body["messages"]]).decode())
    return call


@functools.lru_cache(maxsize=64)
def _server(base_url: str) -> dict[str, Any]:
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {"server.address": parts.hostname or "", "server.port": port}


def _request_attributes(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, name in REQUEST_PARAMETERS.items():
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[f"gen_ai.request.{name}"] = value
    if isinstance(body.get("n"), int) and body["n"] != 1:
        out["gen_ai.request.choice.count"] = body["n"]
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        out["gen_ai.output.type"] = "json"
    return out


def _response_attributes(data: dict[str, Any], finishes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data.get("model"), str):
        out["gen_ai.response.model"] = data["model"]
    if isinstance(data.get("id"), str):
        out["gen_ai.response.id"] = data["id"]
    if finishes:
        out["gen_ai.response.finish_reasons"] = finishes
    usage = data.get("usage")
    if isinstance(usage, dict):
        for key, name in (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens")):
            if isinstance(usage.get(key), int):
                out[f"gen_ai.usage.{name}"] = usage[key]
    return out


def _input_message(message: Any) -> dict[str, Any]:
    if not isinstance(message, dict):
        return {"role": "user", "parts": []}
    content = message.get("content")
    if isinstance(content, str):
        parts = [{"type": "text", "content": content}]
    elif isinstance(content, list):
        parts = [{"type": "text", "content": p.get("text", "")} for p in content if isinstance(p, dict) and p.get("type") == "text"]
    else:
        parts = []
    return {"role": message.get("role", "user"), "parts": parts}


def _output_message(choice: dict[str, Any]) -> dict[str, Any]:
    message = choice.get("message") or {}
    content = message.get("content")
    out: dict[str, Any] = {"role": message.get("role", "assistant"), "parts": []}
    if isinstance(content, str):
        out["parts"] = [{"type": "text", "content": content}]
    if isinstance(choice.get("finish_reason"), str):
        out["finish_reason"] = choice["finish_reason"]
    return out


# -- the profile lookup and the monitor ---------------------------------------------------------


@contextmanager
def memory_search(store: str = "perg-profiles") -> Iterator[None]:
    """The profile lookup as a GenAI memory operation (`search_memory`), scoped to the user."""
    tracing = _active
    if tracing is None or not trace.get_current_span().is_recording():
        yield
        return
    attributes = {"gen_ai.operation.name": "search_memory", "gen_ai.memory.store.name": store, "gen_ai.memory.scope": "user"}
    with tracing.tracer.start_as_current_span(f"search_memory {store}", kind=SpanKind.CLIENT, attributes=attributes):
        yield


@contextmanager
def evaluation(parent: str | None, request_id: str, model: str, strategy: str) -> Iterator[None]:
    """The monitor's judging of one request: a span in the request's trace (`parent`, its
    `traceparent`), linked to the request span; current while the judges run."""
    tracing = _active
    if tracing is None:
        yield
        return
    context = tracing.propagator.extract({"traceparent": parent}) if parent else otel_context.Context()
    request = trace.get_current_span(context).get_span_context()
    links = [Link(request, {"perg.link": "judged_request"})] if request.is_valid else []
    attributes = {"perg.request_id": request_id, "gen_ai.request.model": model, "perg.strategy": strategy}
    span = tracing.tracer.start_span("perg.monitor.evaluate", context=context, links=links, attributes=attributes)
    with trace.use_span(span, end_on_exit=True):
        yield


def judged(sample: Any) -> None:
    """Each verdict on a judged sample (a `JudgedSample`) as a `gen_ai.evaluation.result` event
    on the current (evaluation) span; reasons only with `capture_content`."""
    tracing = _active
    if tracing is None:
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    common = {"perg.role": sample.role, "perg.strategy": sample.strategy, "perg.relevance": sample.relevance}
    reasons = sample.reasons if tracing.capture_content else {}
    if sample.verdict is not None:
        _evaluation(span, common, "perg.consistency", label=sample.verdict, explanation=reasons.get("consistency"))
    if sample.follow_score is not None:
        label = "followed" if sample.followed else "not_followed"
        _evaluation(span, common, "perg.follow", value=float(sample.follow_score), label=label, explanation=reasons.get("follow"))
    if sample.robust is not None:
        _evaluation(span, common, "perg.robustness", value=1.0 if sample.robust else 0.0, label="robust" if sample.robust else "not_robust")
    span.set_attributes(
        {f"perg.{sample.role}.{key}": value for key in ("broken", "followed", "robust") if (value := getattr(sample, key)) is not None}
    )


def _evaluation(
    span: trace.Span, common: dict[str, Any], name: str, *, label: str, value: float | None = None, explanation: str | None = None
) -> None:
    attributes: dict[str, Any] = {"gen_ai.evaluation.name": name, "gen_ai.evaluation.score.label": label, **common}
    if value is not None:
        attributes["gen_ai.evaluation.score.value"] = value
    if explanation:
        attributes["gen_ai.evaluation.explanation"] = explanation
    span.add_event(EVALUATION, attributes)

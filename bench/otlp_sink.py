"""An OTLP/HTTP trace receiver on loopback for the tracing benchmark: decodes each export with
opentelemetry-proto (the protocol's own message classes), counts the spans, answers 200.

    python -m bench.otlp_sink --port N        GET /count -> {"spans": n, "exports": m}
"""

from __future__ import annotations

import argparse
import subprocess

from bench.common import start_module


def start(cpu: int = 1) -> tuple[subprocess.Popen, int]:
    return start_module("bench.otlp_sink", cpu)


def main() -> None:
    from aiohttp import web
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    counts = {"spans": 0, "exports": 0}

    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest.FromString(await request.read())
        counts["exports"] += 1
        counts["spans"] += sum(len(scope.spans) for resource in message.resource_spans for scope in resource.scope_spans)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf")

    async def count(request: web.Request) -> web.Response:
        return web.json_response(counts)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/count", count)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()

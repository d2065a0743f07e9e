"""The floor of the side-by-side benchmark: a bare aiohttp + uvloop forwarder.

Every request goes to the upstream with the same method, path, query, headers and body, on one
pooled aiohttp session, and the answer comes back chunk by chunk. No auth, metrics, logs,
validation or header rules: what any aiohttp proxy costs at the least, on this machine, in the
same run as perg-proxy.

    python -m bench.bare_forwarder --port N --upstream http://127.0.0.1:M
"""

from __future__ import annotations

import argparse

import aiohttp
import uvloop
from aiohttp import web

DROP = {"host", "content-length", "transfer-encoding", "connection"}


def app(upstream: str) -> web.Application:
    application = web.Application()

    async def session(application: web.Application):  # type: ignore[no-untyped-def]
        application["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), auto_decompress=False)
        yield
        await application["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP}
        body = await request.read()
        url = upstream + request.raw_path
        async with request.app["session"].request(request.method, url, headers=headers, data=body or None) as answer:
            response = web.StreamResponse(status=answer.status, headers={k: v for k, v in answer.headers.items() if k.lower() not in DROP})
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    application.cleanup_ctx.append(session)
    application.router.add_route("*", "/{tail:.*}", forward)
    return application


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    web.run_app(
        app(args.upstream), host="127.0.0.1", port=args.port, backlog=4096, print=None, access_log=None, loop=uvloop.new_event_loop()
    )


if __name__ == "__main__":
    main()

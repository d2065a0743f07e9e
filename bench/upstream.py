"""The scripted fake upstream (tests/fake_upstream.py) for the side-by-side benchmark, on CPU 1.

The same app as `python -m tests.fake_upstream`, listening with a backlog of 4096 instead of
aiohttp's 128, so 256 clients (or a gateway's 256 pooled connections) connecting at once are
not stalled by the upstream's own accept queue: that would land on every path alike and hide
the gateways' differences.

    python -m bench.upstream --port N
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess

from bench.common import start_module

BACKLOG = 4096


def start(cpu: int = 1) -> tuple[subprocess.Popen, int]:
    return start_module("bench.upstream", cpu)


def main() -> None:
    from aiohttp import web

    from tests.fake_upstream import FakeUpstream

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    app = FakeUpstream(record=False).app()
    web.run_app(app, host="127.0.0.1", port=args.port, backlog=BACKLOG, print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    main()

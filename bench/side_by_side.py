"""Side-by-side benchmark: direct, a bare aiohttp forwarder (the floor), perg-proxy (off,
pref_aligner), LiteLLM's proxy, Portkey's gateway.

    python bench/side_by_side.py [--quick] [--no-peers] [--concurrency 1,32] [--soak-minutes 30] [--docs FILE]

All paths reach the same fake upstream (tests/fake_upstream.py, model `echo`) in the same run.
Every gateway is pinned to CPU 0, the fake upstream and this load generator to CPU 1. For each
of plain and streaming requests, at concurrency 1, 32 and 256, each path gets three rounds (in
turn with the other paths), each a warm-up of every connection and then a timed run bounded in
requests and seconds: p50 / p99 latency and the latency added over the direct path, time to
first token, requests/s, errors, the gateway's CPU time per request, the peak RSS of its process
tree (sampled every 0.25 s) and the kernel's accept-queue overflows while it ran. LiteLLM is installed into bench/.venvs/litellm
and Portkey under bench/gateways/portkey/node_modules on first use. A soak run then offers a
steady rate to a fresh perg-proxy (`off`) and samples its RSS every 5 s. Figures are comparable
only within one run: the machine is shared. Full runs write the Markdown to --docs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import comparison, upstream  # noqa: E402
from bench.common import pin_self  # noqa: E402
from bench.gateways import Processes, Target, bare_forwarder, litellm_proxy, perg_proxy, portkey_gateway  # noqa: E402
from bench.loadgen import Result, run_load  # noqa: E402
from bench.memory import PeakSampler, cpu_seconds, tree_rss_kib  # noqa: E402
from bench.soak import run_soak  # noqa: E402

CONCURRENCY = (1, 32, 256)
# (requests, seconds) per row and path, split over the rounds; each round also warms every
# connection first (max(2, 200 // concurrency) unrecorded requests each)
FULL = {1: (3000, 15), 32: (24000, 15), 256: (45000, 21)}
QUICK = {1: (300, 4), 32: (3000, 4), 256: (6000, 6)}
ROUNDS = 3
DOCS = ROOT / "docs" / "benchmark-side-by-side.md"
JSON_OUT = ROOT / "bench" / "out" / "side_by_side.json"


@dataclass
class Tally:
    """One path's figures for one row, summed over the rounds."""

    result: Result = field(default_factory=Result)
    sent: int = 0
    cpu: float = 0.0
    peak_kib: int = 0
    overflows: int = 0

    def row(self, target: Target, stream: bool, concurrency: int) -> dict:
        row = {
            "path": target.name,
            "stream": stream,
            "concurrency": concurrency,
            **self.result.summary(),
            "listen_overflows": self.overflows,
        }
        row["error_kinds"] = dict(self.result.error_kinds)
        if target.process:
            row["peak_rss_mib"] = self.peak_kib / 1024
            row["cpu_us_per_req"] = self.cpu / max(1, self.sent) * 1e6
        return row


def listen_overflows() -> int:
    """The kernel's count of connections dropped because an accept queue was full (all sockets)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return 0


async def measure_round(target: Target, stream: bool, concurrency: int, budget: tuple[int, float], tally: Tally) -> None:
    """One steady-state run: connect, warm up every connection, then time requests until the budget."""
    requests, seconds = budget
    warmup_each = max(2, 200 // concurrency)
    load = run_load(
        "127.0.0.1",
        target.port,
        target.request(stream),
        concurrency=concurrency,
        requests=requests,
        max_seconds=seconds,
        warmup_each=warmup_each,
    )
    overflows, pid = listen_overflows(), target.process.pid if target.process else None
    if pid:
        cpu_before = cpu_seconds(pid)
        async with PeakSampler(pid) as sampler:
            result = await load
        tally.cpu += cpu_seconds(pid) - cpu_before
        tally.peak_kib = max(tally.peak_kib, sampler.peak_kib)
    else:
        result = await load
    tally.overflows += listen_overflows() - overflows
    tally.sent += result.count + result.errors + concurrency * warmup_each
    merged = tally.result
    merged.latencies += result.latencies
    merged.ttfb += result.ttfb
    for kind, count in result.error_kinds.items():
        merged.fail(kind, count)
    merged.wall += result.wall


async def compare(targets: list[Target], quick: bool, concurrencies: tuple[int, ...] = CONCURRENCY) -> list[dict]:
    """Per row, `ROUNDS` rounds through every path in turn, so drifting load elsewhere on the
    machine lands on all paths alike; each round gets 1/ROUNDS of the row's budget."""
    budgets, rounds = (QUICK, 1) if quick else (FULL, ROUNDS)
    rows = []
    for stream in (False, True):
        for concurrency in concurrencies:
            requests, seconds = budgets[concurrency]
            tallies = {target.name: Tally() for target in targets}
            for _ in range(rounds):
                for target in targets:
                    await measure_round(target, stream, concurrency, (requests // rounds, seconds / rounds), tallies[target.name])
            for target in targets:
                rows.append(tallies[target.name].row(target, stream, concurrency))
                progress(rows[-1])
    return rows


def progress(row: dict) -> None:
    print(
        f"  {'stream' if row['stream'] else 'plain':6} c={row['concurrency']:<3} {row['path']:24} {row['requests']:6} ok {row['errors']:4} err "
        f"p50 {row['p50_ms']:7.2f} p99 {row['p99_ms']:8.2f} ms {row['rps']:7.0f} req/s {row['listen_overflows']:5} overflows",
        file=sys.stderr,
        flush=True,
    )


def start_targets(processes: Processes, upstream_port: int, workdir: Path, peers: bool) -> list[Target]:
    targets = [Target("direct", upstream_port), bare_forwarder(processes, upstream_port, workdir)]
    targets += [perg_proxy(processes, upstream_port, workdir, strategy) for strategy in ("off", "pref_aligner")]
    if peers:
        targets.append(litellm_proxy.start(processes, upstream_port, workdir))
        targets.append(portkey_gateway.start(processes, upstream_port, workdir))
    return targets


async def check_targets(targets: list[Target]) -> None:
    """One plain and one streaming request per path, so a routing mistake fails before the tables."""
    for target in targets:
        for stream in (False, True):
            result = await run_load("127.0.0.1", target.port, target.request(stream), concurrency=1, requests=1, max_seconds=30)
            if result.errors or result.count != 1:
                raise RuntimeError(f"{target.name} failed a {'streaming' if stream else 'plain'} request")


def versions(peers: bool) -> dict[str, str]:
    mine = {"Python": platform.python_version(), "perg-proxy": metadata.version("perg-proxy"), "aiohttp": metadata.version("aiohttp")}
    if not peers:
        return mine
    return {
        **mine,
        "Node": portkey_gateway.node_version(),
        "LiteLLM": litellm_proxy.version(),
        "Portkey gateway": portkey_gateway.package_version("@portkey-ai/gateway"),
        "@hono/node-server": portkey_gateway.package_version("@hono/node-server"),
    }


async def soak(processes: Processes, upstream_port: int, workdir: Path, rate: float, minutes: float) -> dict:
    target = perg_proxy(processes, upstream_port, workdir, "off", name="perg-soak")
    idle = tree_rss_kib(target.process.pid) / 1024
    print(f"soak: {rate:.0f} req/s for {minutes:g} min through a fresh perg-proxy off ({idle:.1f} MiB idle)", file=sys.stderr, flush=True)
    requests = (target.request(False), target.request(True))
    result = await run_soak("127.0.0.1", target.port, requests, target.process.pid, rate=rate, seconds=minutes * 60)
    return result.summary()


async def run(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    if args.peers:
        litellm_proxy.ensure_venv()
        portkey_gateway.ensure_modules()
    load_at_start = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="perg-side-by-side-"))
    print(f"logs and configs in {workdir}", file=sys.stderr, flush=True)
    fakes, gateways = Processes(), Processes()
    try:
        fake, upstream_port = upstream.start()
        fakes.add(fake)
        targets = start_targets(gateways, upstream_port, workdir, args.peers)
        await check_targets(targets)
        rows = await compare(targets, args.quick, args.concurrency)
        tables_minutes, load_at_end = (time.monotonic() - started) / 60, os.getloadavg()[0]
        gateways.stop_all()  # the soak runs alone on the gateway CPU
        soak_figures = await soak(gateways, upstream_port, workdir, args.soak_rate, args.soak_minutes) if args.soak_minutes else None
    finally:
        gateways.stop_all()
        fakes.stop_all()
    machine = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": comparison.cpu_model(),
        "cores": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "versions": versions(args.peers),
        "run_minutes": (time.monotonic() - started) / 60,
        "tables_minutes": tables_minutes,
        "loadavg": [load_at_start, load_at_end],
        "quick": args.quick,
        "logs": str(workdir),
    }
    return {"machine": machine, "rows": rows, "soak": soak_figures, "soak_rate": args.soak_rate, "soak_minutes": args.soak_minutes}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small, short runs (a smoke test)")
    parser.add_argument("--no-peers", dest="peers", action="store_false", help="measure without LiteLLM and Portkey (the floor stays)")
    parser.add_argument(
        "--concurrency",
        type=lambda text: tuple(int(part) for part in text.split(",")),
        default=CONCURRENCY,
        help="comma-separated concurrencies (default: 1,32,256)",
    )
    parser.add_argument("--soak-minutes", type=float, default=0.0, help="minutes of soak after the tables (0: none)")
    parser.add_argument("--soak-rate", type=float, default=200.0, help="requests/s offered during the soak")
    parser.add_argument("--docs", type=Path, help=f"write the Markdown here (default for full runs: {DOCS.relative_to(ROOT)})")
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        help=f"measure nothing: render the figures runs saved ({JSON_OUT.relative_to(ROOT)}), one section each",
    )
    args = parser.parse_args()
    if args.docs is None and not args.quick:
        args.docs = DOCS
    return args


def measured(args: argparse.Namespace) -> dict:
    pin_self(1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through run()'s finally
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    outcome = runner(run(args))
    JSON_OUT.parent.mkdir(parents=True, exist_ok=True)
    JSON_OUT.write_text(json.dumps(outcome, indent=2))
    return outcome


def main() -> None:
    args = parse_args()
    outcomes = [json.loads(path.read_text()) for path in args.from_json] if args.from_json else [measured(args)]
    titles = (
        [f"Results: run {index} ({outcome['machine']['date']})" for index, outcome in enumerate(outcomes, 1)]
        if len(outcomes) > 1
        else ["Results"]
    )
    markdown = "\n".join(comparison.results_markdown(outcome, title) for outcome, title in zip(outcomes, titles, strict=True))
    print(markdown)
    if args.docs:
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text(comparison.HOW_TO + markdown + "\n")
        print(f"\nwrote {args.docs}", file=sys.stderr)


if __name__ == "__main__":
    main()

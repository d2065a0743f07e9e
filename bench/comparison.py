"""Markdown for the side-by-side benchmark: the machine, the tables, the targets, the soak."""

from __future__ import annotations

import platform
from pathlib import Path

HOW_TO = """# Side-by-side benchmark

perg-proxy against the direct path, LiteLLM's proxy and Portkey's gateway, all in front of the same
scripted fake upstream (`tests/fake_upstream.py`, model `echo`, which answers at once), in one run.

Written by `python bench/side_by_side.py`; the summary and caveats are in [benchmark.md](benchmark.md).

## How to run

```
python bench/side_by_side.py                     # full run, writes this file (about 10 minutes)
python bench/side_by_side.py --soak-minutes 30   # the same, then the 30-minute soak
python bench/side_by_side.py --quick             # a smoke run; prints, writes nothing unless --docs
python bench/side_by_side.py --from-json A.json B.json   # re-render saved runs, one section each
```

It needs node and npm on PATH and reaches PyPI and the npm registry once: LiteLLM
(`bench/gateways/litellm/requirements.txt`) is installed with pip into a virtualenv of its own,
`bench/.venvs/litellm`, and Portkey's gateway with `npm ci` from `bench/gateways/portkey/`, whose
lock file pins `@portkey-ai/gateway` and overrides `@hono/node-server` to 1.13.5 (newer versions
break its streaming). Both are reused while their pins are unchanged. Raw figures go to
`bench/out/side_by_side.json`, each process's log to the temporary directory the run prints.

## What is measured, and how

- **Paths.** `direct`: load generator -> fake upstream. `perg-proxy off`: `perg-proxy serve` with
  `default_strategy: off`. `perg-proxy pref_aligner`: the default strategy, each request carrying
  `"personalization": {"preferences": ["Answer in the style of a pirate."]}`, so every request makes
  three upstream calls (the answer and the relevance gate side by side, then the rewrite) where the
  other paths make one: its added latency is the price of personalization, not of proxying.
  `LiteLLM`: `litellm --config` with one `model_list` entry, `openai/echo` at the fake upstream's
  `api_base`, a master key, `LITELLM_LOG=ERROR`. `Portkey`: `@portkey-ai/gateway` under node
  (`NODE_ENV=production`, `--headless`), routed by the `x-portkey-provider: openai` and
  `x-portkey-custom-host` headers. Every gateway listens on 127.0.0.1 only; perg-proxy logs at
  `warning` (its default `info` writes a line per request), LiteLLM at `ERROR`, Portkey prints
  nothing per request.
- **CPUs.** Each gateway is pinned to CPU 0 (the CPU `bench/common.py` gives perg-proxy); the fake
  upstream and the load generator share CPU 1. Gateways not being measured sit idle on CPU 0. So
  the direct path and a gateway fast enough to outrun CPU 1 are both capped by the load generator
  and the fake upstream: req/s then says "at least", and the gateway's own CPU time per request
  (user + system, from /proc) is the fairer measure of its cost. "Gateway CPU busy" is CPU time
  per request x req/s (warm-up requests included, so it can read a little over 1): near 1.00 the
  gateway was using all of CPU 0; well below 1.00 at high concurrency, it was waiting for a CPU
  that other jobs on the machine held (or for CPU 1).
- **Load.** `bench/loadgen.py`: keep-alive HTTP/1.1 connections, one per concurrent client,
  pre-built requests. Each row is three rounds, the paths taking turns within a round so that
  load elsewhere on the machine lands on all of them alike; a round opens every connection,
  sends `max(2, 200 // concurrency)` unrecorded requests on each, then times requests until its
  share of the row's request count or seconds is used up (and is cut off 30 s later, counting
  what is still open as errors). So the latencies are steady state: connecting is not in them.
  What connecting costs shows in the last column: the kernel's count of connections dropped
  because a listener's accept queue was full (`ListenOverflows`, for the whole machine) during
  the row; each drop stalls that connection's first request by a SYN retransmit (1 s or more).
  The fake upstream listens with a backlog of 4096 so that it causes none itself.
  Latency is per request, to the end of the body; TTFT is the time to the first SSE chunk
  carrying non-empty content. "Added" is the row minus the direct row at the same concurrency.
  Errors: non-200 statuses, broken connections, and 200 event streams carrying an error event or
  ending without `data: [DONE]`.
- **Memory.** Peak RSS of the gateway's process tree, sampled every 0.25 s during the row.
- **Soak.** A fresh `perg-proxy off`, a steady offered rate (open loop), RSS every 5 s; first,
  last and max after the warm-up (the first 20% of the run, at most 2 minutes).
- Figures are comparable within one run only: the two CPUs are shared with other jobs.

"""

PERG = "perg-proxy off"
FLOOR = "bare aiohttp forwarder"
RIVALS = ("LiteLLM", "Portkey")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_lines(info: dict, rows: list[dict]) -> list[str]:
    versions = ", ".join(f"{name} {value}" for name, value in info["versions"].items())
    lines = [
        f"- date: {info['date']} (end of the run)",
        f"- machine: {info['cpu']}, {info['cores']} cores ({info['kernel']}), shared with other jobs",
        f"- versions: {versions}",
        f"- run time: {info['run_minutes']:.1f} min in all, {info['tables_minutes']:.1f} min for the tables ({'--quick' if info['quick'] else 'full'})",
    ]
    if "loadavg" in info:
        lines.append(f"- load average (1 min) at the start and end of the tables: {info['loadavg'][0]:.2f}, {info['loadavg'][1]:.2f}")
    busy = [r["cpu_us_per_req"] * r["rps"] / 1e6 for r in rows if r["path"] == PERG and r["concurrency"] > 1]
    if busy:
        lines.append(
            f"- share of CPU 0 perg-proxy got at concurrency 32 and 256: {min(busy):.2f}-{max(busy):.2f} "
            "(about 1.00 when nothing else on the machine wants that CPU)"
        )
    return lines


def _added(row: dict, direct: dict, key: str) -> str:
    return f"{row[key] - direct[key]:+.2f}" if row["path"] != "direct" else "–"


def _cells(row: dict, direct: dict, stream: bool) -> list[str]:
    cells = [row["path"], str(row["concurrency"]), str(row["requests"]), str(row["errors"])]
    cells += [f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}", _added(row, direct, "p50_ms"), _added(row, direct, "p99_ms")]
    if stream:
        cells += [f"{row['ttfb_p50_ms']:.2f}", _added(row, direct, "ttfb_p50_ms")]
    cells.append(f"{row['rps']:.0f}")
    cost = row.get("cpu_us_per_req")
    cells.append(f"{cost:.0f}" if cost is not None else "–")
    cells.append(f"{cost * row['rps'] / 1e6:.2f}" if cost is not None else "–")
    cells.append(f"{row['peak_rss_mib']:.0f}" if row.get("peak_rss_mib") else "–")
    cells.append(str(row.get("listen_overflows", "–")))
    return cells


def table(rows: list[dict], stream: bool) -> str:
    head = ["path", "conc", "requests", "errors", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms"]
    if stream:
        head += ["TTFT p50 ms", "added TTFT p50 ms"]
    head += ["req/s", "gateway CPU µs/req", "gateway CPU busy", "peak RSS MiB", "accept-queue drops"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for concurrency in sorted({r["concurrency"] for r in rows}):
        group = [r for r in rows if r["stream"] == stream and r["concurrency"] == concurrency]
        direct = next(r for r in group if r["path"] == "direct")
        lines += ["| " + " | ".join(_cells(r, direct, stream)) + " |" for r in group]
    return "\n".join(lines)


def _rows_by(rows: list[dict]) -> dict[tuple[bool, int], dict[str, dict]]:
    grouped: dict[tuple[bool, int], dict[str, dict]] = {}
    for row in rows:
        grouped.setdefault((row["stream"], row["concurrency"]), {})[row["path"]] = row
    return grouped


def latency_target(rows: list[dict], subject: str = PERG) -> tuple[bool, list[str]]:
    """`subject` adds less p50 and p99 latency than every rival on every row."""
    met, lines = True, []
    for (stream, concurrency), paths in sorted(_rows_by(rows).items()):
        direct, mine = paths["direct"], paths[subject]
        for key in ("p50_ms", "p99_ms"):
            added = mine[key] - direct[key]
            rivals = {name: paths[name][key] - direct[key] for name in RIVALS if name in paths}
            ok = all(added < other for other in rivals.values())
            met &= ok
            others = ", ".join(f"{name} {value:+.2f}" for name, value in rivals.items())
            lines.append(
                f"stream={stream!s:5} c={concurrency:<3} {key[:3]}: {subject} {added:+.2f} ms vs {others} -> {'yes' if ok else 'NO'}"
            )
    return met, lines


def concurrency_32_target(rows: list[dict]) -> tuple[bool | None, list[str]]:
    """At concurrency 32, perg-proxy `off`'s req/s against 20x LiteLLM's and 2x Portkey's (the
    upstream-layer issue's targets); None when a peer or the row was not measured."""
    factors = {"LiteLLM": 20.0, "Portkey": 2.0}
    met, lines = True, []
    for (stream, concurrency), paths in sorted(_rows_by(rows).items()):
        if concurrency != 32 or PERG not in paths:
            continue
        if not all(paths.get(name, {}).get("rps") for name in factors):
            return None, []
        ratios = {name: paths[PERG]["rps"] / paths[name]["rps"] for name in factors}
        met &= all(ratios[name] >= factor for name, factor in factors.items())
        lines.append(
            f"stream={stream!s:5} c=32  {paths[PERG]['rps']:.0f} req/s = "
            + ", ".join(f"{ratios[name]:.2f}x {name} (need {factor:.0f}x)" for name, factor in factors.items())
        )
    return (met if lines else None), lines


def throughput_target(rows: list[dict]) -> tuple[bool, bool, list[str]]:
    """perg-proxy's req/s against 10x LiteLLM's and 2x Portkey's: per row, and at each one's best."""
    factors = {"LiteLLM": 10.0, "Portkey": 2.0}
    per_row_met, lines = True, []
    for (stream, concurrency), paths in sorted(_rows_by(rows).items()):
        mine = paths[PERG]["rps"]
        parts = []
        for name, factor in factors.items():
            ratio = mine / paths[name]["rps"] if paths.get(name, {}).get("rps") else float("inf")
            per_row_met &= ratio >= factor
            parts.append(f"{ratio:.2f}x {name} (need {factor:.0f}x)")
        cost = paths[PERG].get("cpu_us_per_req") or float("nan")
        shares = ", ".join(f"{name} {paths[name]['cpu_us_per_req'] / cost:.1f}x" for name in factors if name in paths)
        parts.append(f"CPU per request vs perg-proxy's: {shares}")
        lines.append(f"stream={stream!s:5} c={concurrency:<3} {mine:.0f} req/s = " + ", ".join(parts))
    best_met = True
    factors = {name: factor for name, factor in factors.items() if any(r["path"] == name for r in rows)}
    if not factors:
        return False, False, [*lines, "LiteLLM and Portkey were not measured in this run (--no-peers)"]
    for stream in (False, True):
        best = {name: max(r["rps"] for r in rows if r["path"] == name and r["stream"] == stream) for name in (PERG, *factors)}
        ratios = {name: best[PERG] / best[name] for name in factors}
        best_met &= all(ratios[name] >= factor for name, factor in factors.items())
        lines.append(
            f"stream={stream!s:5} best: {PERG} {best[PERG]:.0f} req/s, "
            + ", ".join(f"{name} {best[name]:.0f} ({ratios[name]:.2f}x, need {factor:.0f}x)" for name, factor in factors.items())
        )
    return per_row_met, best_met, lines


def floor_target(rows: list[dict]) -> tuple[bool, bool, list[str]]:
    """perg-proxy `off` against the bare forwarder: added p50 at concurrency 1 within 0.6 ms of
    the floor's, requests/s at concurrency 32 at least 0.6x the floor's."""
    latency_met, throughput_met, lines = True, True, []
    for (stream, concurrency), paths in sorted(_rows_by(rows).items()):
        if FLOOR not in paths or PERG not in paths:
            continue
        direct, mine, floor = paths["direct"], paths[PERG], paths[FLOOR]
        added, floor_added = mine["p50_ms"] - direct["p50_ms"], floor["p50_ms"] - direct["p50_ms"]
        ratio = mine["rps"] / floor["rps"] if floor["rps"] else float("nan")
        line = f"stream={stream!s:5} c={concurrency:<3} added p50: perg-proxy off {added:+.2f} ms, floor {floor_added:+.2f} ms ({added - floor_added:+.2f} ms)"
        line += f"; req/s {mine['rps']:.0f} vs floor {floor['rps']:.0f} = {ratio:.2f}x"
        cost, floor_cost = mine.get("cpu_us_per_req"), floor.get("cpu_us_per_req")
        if cost and floor_cost:
            line += f"; CPU/request {cost:.0f} vs {floor_cost:.0f} µs = {cost / floor_cost:.2f}x"
        if concurrency == 1:
            ok = added - floor_added <= 0.6
            latency_met &= ok
            line += f" -> latency target {'yes' if ok else 'NO'}"
        if concurrency == 32:
            ok = ratio >= 0.6
            throughput_met &= ok
            line += f" -> throughput target {'yes' if ok else 'NO'}"
        lines.append(line)
    return latency_met, throughput_met, lines


def error_target(rows: list[dict]) -> tuple[bool, list[str]]:
    lines, met = [], True
    for row in rows:
        if row["stream"] and row["concurrency"] == 256 and row["path"].startswith("perg-proxy"):
            met &= row["errors"] == 0
            lines.append(f"{row['path']}: {row['errors']} errors in {row['requests'] + row['errors']} streams at concurrency 256")
    return met, lines


def yes(flag: bool) -> str:
    return "**met**" if flag else "**not met**"


def targets_section(rows: list[dict], soak: dict | None) -> list[str]:
    latency_met, latency_lines = latency_target(rows)
    aligner_met, aligner_lines = latency_target(rows, "perg-proxy pref_aligner")
    per_row, best, throughput_lines = throughput_target(rows)
    errors_met, error_lines = error_target(rows)
    floor_latency, floor_throughput, floor_lines = floor_target(rows)
    out = ["### Targets", ""]
    out += [
        f"0. Against the bare aiohttp + uvloop forwarder (the floor): added p50 at concurrency 1 within 0.6 ms of the floor's "
        f"{yes(floor_latency)}; requests/s at concurrency 32 at least 0.6x the floor's {yes(floor_throughput)}",
        "",
    ]
    out += ["   ```", *(f"   {line}" for line in floor_lines), "   ```", ""]
    if not any(row["path"] in RIVALS for row in rows):
        out += ["1.-2. LiteLLM and Portkey: not measured in this run (`--no-peers`).", ""]
        out += [f"3. No errors at 256 concurrent streams: {yes(errors_met)}" if error_lines else "3. Concurrency 256: not measured.", ""]
        return out
    out += [f"1. perg-proxy (`off`) adds less latency (p50 and p99) than LiteLLM and Portkey on every row: {yes(latency_met)}", ""]
    out += ["   ```", *(f"   {line}" for line in latency_lines), "   ```", ""]
    out += [
        f"   With `pref_aligner` (three upstream calls, two of them in sequence, where the others make one): {yes(aligner_met)}",
        "",
        "   ```",
        *(f"   {line}" for line in aligner_lines),
        "   ```",
        "",
    ]
    out += [
        f"2. At least 10x LiteLLM's and 2x Portkey's requests/s: on every row {yes(per_row)}; at each one's best concurrency {yes(best)}",
        "",
    ]
    out += ["   ```", *(f"   {line}" for line in throughput_lines), "   ```", ""]
    c32_met, c32_lines = concurrency_32_target(rows)
    if c32_met is not None:
        out += [f"   At concurrency 32, at least 20x LiteLLM's and 2x Portkey's requests/s: {yes(c32_met)}", ""]
        out += ["   ```", *(f"   {line}" for line in c32_lines), "   ```", ""]
    if error_lines:
        out += [f"3. No errors at 256 concurrent streams: {yes(errors_met)}", ""]
        out += ["   ```", *(f"   {line}" for line in error_lines), "   ```", ""]
    else:
        out += ["3. Concurrency 256: not measured in this run (`--concurrency`).", ""]
    if soak:
        flat = soak["growth_max_pct"] <= 10
        out += [
            f"4. Soak: resident memory flat within 10%: {yes(flat)} (max {soak['growth_max_pct']:+.1f}% over the first sample after warm-up)",
            "",
        ]
    else:
        out += ["4. Soak: not run (`--soak-minutes 0`).", ""]
    return out


def soak_section(soak: dict | None, rate: float, minutes: float) -> list[str]:
    if not soak:
        return []
    return [
        "### Soak",
        "",
        f"perg-proxy `off`, a fresh process, {rate:.0f} requests/s offered for {minutes:g} min (half plain, half streaming, "
        f"16 keep-alive connections on a fixed schedule); RSS of the process tree sampled every 5 s; "
        f"the first {soak['warmup_s']:.0f} s are warm-up.",
        "",
        "| answered | errors | late sends | achieved req/s | p50 ms | p99 ms | RSS first MiB | RSS last MiB | RSS max MiB | last vs first | max vs first |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {soak['requests']} | {soak['errors']} | {soak['late']} | {soak['rps']:.1f} | {soak['p50_ms']:.2f} | {soak['p99_ms']:.2f} | "
        f"{soak['rss_first_mib']:.1f} | {soak['rss_last_mib']:.1f} | {soak['rss_max_mib']:.1f} | "
        f"{soak['growth_last_pct']:+.1f}% | {soak['growth_max_pct']:+.1f}% |",
        "",
    ]


def errors_section(rows: list[dict]) -> list[str]:
    failed = [row for row in rows if row["errors"]]
    if not failed:
        return ["No request failed on any path.", ""]
    lines = ["Failed requests, by kind:", ""]
    for row in failed:
        kinds = ", ".join(f"{count} {kind}" for kind, count in row.get("error_kinds", {}).items())
        lines.append(
            f"- {row['path']}, {'streaming' if row['stream'] else 'plain'}, concurrency {row['concurrency']}: {kinds or row['errors']}"
        )
    return [*lines, ""]


def results_markdown(outcome: dict, title: str = "Results") -> str:
    info, rows = outcome["machine"], outcome["rows"]
    out = [f"## {title}", "", *machine_lines(info, rows), ""]
    out += ["### Non-streaming", "", table(rows, False), "", "### Streaming (SSE)", "", table(rows, True), "", *errors_section(rows)]
    out += [*targets_section(rows, outcome.get("soak")), *soak_section(outcome.get("soak"), outcome["soak_rate"], outcome["soak_minutes"])]
    return "\n".join(out)

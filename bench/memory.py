"""Resident memory of a process tree (a gateway and whatever it forked), sampled from /proc."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path


def children(pid: int) -> list[int]:
    """Direct children of `pid`, from every thread's `children` list."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        queue.extend(children(current))
    return pids


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(pid: int) -> int:
    """The summed RSS of `pid` and its descendants (shared pages counted once per process)."""
    return sum(rss_kib(member) for member in tree(pid))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its live descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for member in tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


@dataclass
class PeakSampler:
    """Samples a process tree's RSS every `interval` seconds while a load runs (an async context)."""

    pid: int
    interval: float = 0.25
    samples: list[int] = field(default_factory=list)
    _task: asyncio.Task | None = None

    @property
    def peak_kib(self) -> int:
        return max(self.samples, default=0)

    async def _sample(self) -> None:
        while True:
            self.samples.append(tree_rss_kib(self.pid))
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> PeakSampler:
        self._task = asyncio.create_task(self._sample(), name=f"rss-{self.pid}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.samples.append(tree_rss_kib(self.pid))

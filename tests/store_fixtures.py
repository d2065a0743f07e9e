"""Fixtures and helpers shared by the store tests (this module holds no tests itself).

`stores` is parametrized over the three backends; it opens as many stores as a test asks for,
all on one database (the same SQLite file, the same PostgreSQL schema), and closes them after.
PostgreSQL runs only with `PERG_TEST_POSTGRES_DSN`; each test gets a fresh schema, dropped after,
so parallel runs on one server do not collide.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from proxy.preferences import Store
from proxy.preferences.memory import MemoryStore
from proxy.preferences.postgres import PostgresStore
from proxy.preferences.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_DSN = os.environ.get("PERG_TEST_POSTGRES_DSN", "")
needs_postgres = pytest.mark.skipif(
    not POSTGRES_DSN, reason="PostgreSQL store tests need PERG_TEST_POSTGRES_DSN (e.g. postgresql://postgres@127.0.0.1:5432/test)"
)
ALL_BACKENDS = ["memory", "sqlite", pytest.param("postgres", marks=needs_postgres)]
SHARED_BACKENDS = ["sqlite", pytest.param("postgres", marks=needs_postgres)]
"""Backends whose data outlives a store instance and is shared between instances and processes."""


@dataclass
class Stores:
    """Opens stores of one backend on one database, and closes them all at the end of a test."""

    backend: str
    path: Path
    schema: str
    opened: list[Store] = field(default_factory=list)
    _memory: MemoryStore | None = None

    def make(self, **options: Any) -> Store:
        if self.backend == "memory":
            return MemoryStore()
        if self.backend == "sqlite":
            return SqliteStore(self.path, **options)
        return PostgresStore(POSTGRES_DSN, schema=self.schema, **options)

    async def open(self, **options: Any) -> Store:
        store = self.make(**options)
        self.opened.append(store)
        await store.open()
        return store

    def settings(self) -> dict[str, Any]:
        """How a worker process opens a store on the same database (see `run_workers`)."""
        return {"backend": self.backend, "path": str(self.path), "dsn": POSTGRES_DSN, "schema": self.schema}

    async def close_all(self) -> None:
        for store in self.opened:
            await store.close()


async def drop_schema(schema: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(POSTGRES_DSN)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


async def _stores(backend: str, tmp_path: Path) -> AsyncIterator[Stores]:
    opened = Stores(backend, tmp_path / "perg" / "profiles.db", f"perg_test_{secrets.token_hex(6)}")
    try:
        yield opened
    finally:
        await opened.close_all()
        if opened.backend == "postgres":
            await drop_schema(opened.schema)


@pytest.fixture(params=ALL_BACKENDS)
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    async for opened in _stores(request.param, tmp_path):
        yield opened


@pytest.fixture(params=SHARED_BACKENDS)
async def shared_stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    """Like `stores`, for the backends whose data outlives a store: SQLite and PostgreSQL."""
    async for opened in _stores(request.param, tmp_path):
        yield opened


@pytest.fixture
async def store(stores: Stores) -> Store:
    return await stores.open()


WORKER = r"""
import asyncio, json, sys
from proxy.preferences.postgres import PostgresStore
from proxy.preferences.sqlite import SqliteStore

async def main(config):
    if config["backend"] == "sqlite":
        store = SqliteStore(config["path"])
    else:
        store = PostgresStore(config["dsn"], schema=config["schema"])
    sys.stdin.readline()  # "go": the processes open (and migrate) the store at the same moment
    async with store:
        print("ready", flush=True)
        sys.stdin.readline()  # "go" again: they start writing together
        gate = asyncio.Semaphore(config["concurrency"])
        async def add(i):
            async with gate:
                await store.patch(config["user"], add=[f"{config['prefix']}-{i}"])
        await asyncio.gather(*(add(i) for i in range(config["count"])))
    print("done", flush=True)

asyncio.run(main(json.loads(sys.argv[1])))
"""


async def run_workers(configs: Sequence[dict[str, Any]], timeout: float = 120.0) -> list[str]:
    """Run one `WORKER` process per config, released together twice (to open, then to write);
    their stdout. Every process is killed by its PID if still running when this returns."""
    import json

    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER,
            json.dumps(config),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for config in configs
    ]
    try:
        _release(processes)
        await asyncio.wait_for(asyncio.gather(*(_read_until(p, "ready") for p in processes)), timeout)
        _release(processes)
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in processes)), timeout)
        for process, (_, err) in zip(processes, outputs, strict=True):
            assert process.returncode == 0, err.decode()
        return [out.decode() for out, _ in outputs]
    finally:
        await stop_processes(processes)


def _release(processes: Sequence[asyncio.subprocess.Process]) -> None:
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(b"go\n")


async def _read_until(process: asyncio.subprocess.Process, wanted: str) -> None:
    assert process.stdout is not None
    for _ in range(1000):
        line = (await process.stdout.readline()).decode()
        if line.strip() == wanted:
            return
        if not line:
            err = await process.stderr.read() if process.stderr else b""
            raise AssertionError(f"worker ended before {wanted!r}: {err.decode()}")
    raise AssertionError(f"worker never printed {wanted!r}")


async def stop_processes(processes: Sequence[asyncio.subprocess.Process]) -> None:
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()

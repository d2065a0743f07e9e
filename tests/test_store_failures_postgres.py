"""PostgreSQL store failures: unreachable, silent, cut mid-life and back, a killed writer.
Each is a typed `StoreUnavailable` (503) within the documented timeouts, never a hang."""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from yarl import URL

from proxy.preferences import StoreError, StoreUnavailable
from proxy.preferences.postgres import PostgresStore, translate
from tests.store_fixtures import POSTGRES_DSN, ROOT, drop_schema, needs_postgres, stop_processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dsn_on_port(port: int) -> str:
    return str(URL(POSTGRES_DSN or "postgresql://postgres@127.0.0.1:5432/test").with_host("127.0.0.1").with_port(port))


class Relay:
    """A TCP relay on 127.0.0.1 in front of PostgreSQL that a test cuts and restores."""

    def __init__(self, port: int) -> None:
        target = URL(POSTGRES_DSN)
        self.target = (target.host or "127.0.0.1", target.port or 5432)
        self.port = port
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stop listening and reset every open connection, as a database crash would."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._links):
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        ends = [writer]
        self._links.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            ends.append(up_writer)
            self._links.add(up_writer)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except OSError:
            pass  # PostgreSQL itself refused: the client sees its connection reset
        finally:
            for end in ends:
                end.transport.abort()
                self._links.discard(end)
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    if not POSTGRES_DSN:
        pytest.skip("PostgreSQL store tests need PERG_TEST_POSTGRES_DSN")
    name = f"perg_test_{secrets.token_hex(6)}"
    yield name
    await drop_schema(name)


async def test_an_unreachable_database_is_unavailable_at_once():
    store = PostgresStore(dsn_on_port(free_port()), connect_timeout=3.0)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        await store.open()
    assert time.monotonic() - started < 2
    assert raised.value.status == 503 and "127.0.0.1" in raised.value.message
    with pytest.raises(StoreUnavailable, match="not open"):
        await store.preference_texts("alice")


async def test_a_server_that_never_answers_is_unavailable_after_the_connect_timeout():
    """A socket that accepts and stays silent (a hung server, a black-holed route)."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        store = PostgresStore(dsn_on_port(port), connect_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="timeout"):
            await store.open()
        assert 0.4 < time.monotonic() - started < 3
        assert held, "the store never connected"
    finally:
        for writer in held:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


@needs_postgres
async def test_a_database_that_goes_away_is_unavailable_and_the_store_recovers(schema: str):
    relay = Relay(free_port())
    store = PostgresStore(dsn_on_port(relay.port), schema=schema, connect_timeout=0.5, acquire_timeout=1.0, command_timeout=1.0)
    try:
        with pytest.raises(StoreUnavailable):
            await store.open()  # down at start
        await relay.start()
        await store.open()  # up: open again, no new store needed
        stored = await store.put("alice", ["kept"])
        await relay.cut()
        for call in (store.ping(), store.preference_texts("alice"), store.patch("alice", add=["lost"]), store.delete("alice")):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await call
            assert time.monotonic() - started < 3
        await relay.start()
        await store.ping()  # the pool replaced its dead connections by itself
        assert await store.get("alice") == stored
        assert (await store.patch("alice", add=["back"])).texts == ("kept", "back")
    finally:
        await store.close()
        await relay.cut()


KILL_WORKER = r"""
import asyncio, sys
from proxy.preferences.postgres import PostgresStore

async def main(dsn, schema):
    async with PostgresStore(dsn, schema=schema) as store:
        for i in range(100000):
            profile = await store.patch("alice", add=[f"write {i}"])
            print("acked", profile.preferences[-1].id, flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@needs_postgres
async def test_writes_acknowledged_before_the_writer_is_killed_are_committed(schema: str):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILL_WORKER, POSTGRES_DSN, schema, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    acked: list[str] = []
    try:
        assert process.stdout is not None
        while len(acked) < 30:
            line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
            assert line, "the worker ended early"
            if line.startswith("acked "):
                acked.append(line.split()[1])
        process.kill()
        rest, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        await stop_processes([process])
    acked += [line.split()[1] for line in rest.decode().splitlines() if line.startswith("acked ")]
    async with PostgresStore(POSTGRES_DSN, schema=schema) as store:
        profile = await store.get("alice")
    assert profile is not None
    stored = [p.id for p in profile.preferences]
    assert stored[: len(acked)] == acked and len(stored) - len(acked) <= 1


@pytest.mark.parametrize(
    ("error", "expected", "words"),
    [
        (ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)"), StoreUnavailable, "Connect call failed"),
        (ConnectionResetError(104, "Connection reset by peer"), StoreUnavailable, "reset"),
        (TimeoutError(), StoreUnavailable, "timeout"),
        (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"), StoreUnavailable, "08003"),
        (asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), StoreUnavailable, "57P03"),
        (asyncpg.exceptions.AdminShutdownError("terminating connection"), StoreUnavailable, "57P01"),
        (asyncpg.exceptions.TooManyConnectionsError("too many clients"), StoreUnavailable, "53300"),
        (asyncpg.exceptions.DiskFullError("could not extend file: No space left"), StoreUnavailable, "53100"),
        (asyncpg.exceptions.PostgresIOError("could not read block"), StoreUnavailable, "58030"),
        (asyncpg.exceptions.ReadOnlySQLTransactionError("read-only transaction"), StoreUnavailable, "25006"),
        (asyncpg.exceptions.DeadlockDetectedError("deadlock detected"), StoreUnavailable, "40P01"),
        (asyncpg.exceptions.SerializationError("could not serialize"), StoreUnavailable, "40001"),
        (asyncpg.InterfaceError("connection is closed"), StoreUnavailable, "closed"),
        (asyncpg.exceptions.UndefinedTableError('relation "profiles" does not exist'), StoreError, "42P01"),
        (asyncpg.exceptions.UniqueViolationError("duplicate key"), StoreError, "23505"),
        (asyncpg.exceptions.DataError("invalid input value"), StoreError, "22000"),
        (asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence"), StoreError, "22021"),
        (asyncpg.exceptions._base.DataError("invalid input for query argument $1"), StoreError, "DataError"),
        (asyncpg.exceptions._base.ClientConfigurationError("bad option"), StoreError, "bad option"),
    ],
)
def test_postgres_errors_map_to_store_errors(error: BaseException, expected: type[StoreError], words: str):
    translated = translate(error, "postgresql://db:5432/perg")
    assert type(translated) is expected
    assert translated.status == (503 if expected is StoreUnavailable else 500)
    assert words in translated.message and "postgresql://db:5432/perg" in translated.message

"""`SqlitePool`: the SQLite connections of one store and the threads that run them.

The standard library's `sqlite3` blocks, so every call runs on a worker thread of the pool's own
executor, never on the event loop. One writer connection (writes in this process queue for it
on the event loop instead of spinning in SQLite's busy handler) and a few reader connections,
which WAL lets read while a write is in progress, so the request path's reads never wait behind
a write. A connection is checked out for one call and returned when that call's thread is done,
even when the awaiting task was cancelled. Every `sqlite3` error leaves as `StoreUnavailable`
or `StoreError`.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import structlog

from .store_errors import StoreError, StoreUnavailable

log = structlog.get_logger("perg.store")

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]

UNAVAILABLE = {
    "SQLITE_BUSY": "the database is locked by another connection for longer than the busy timeout",
    "SQLITE_LOCKED": "the database is locked",
    "SQLITE_FULL": "the disk (or the database's size limit) is full",
    "SQLITE_IOERR": "a disk I/O error occurred",
    "SQLITE_READONLY": "the database file is read-only",
    "SQLITE_CANTOPEN": "the database file cannot be opened",
    "SQLITE_PERM": "permission denied",
    "SQLITE_CORRUPT": "the database file is corrupt",
    "SQLITE_NOTADB": "the file is not a SQLite database",
    "SQLITE_PROTOCOL": "the WAL locking protocol failed",
    "SQLITE_NOLFS": "large files are not supported",
}


def translate(error: sqlite3.Error, path: Path) -> StoreError:
    """The store error for a `sqlite3` error: unavailable for lock, disk and file trouble."""
    name = getattr(error, "sqlite_errorname", "") or ""
    primary = "_".join(name.split("_")[:2])
    if primary in UNAVAILABLE or (isinstance(error, sqlite3.OperationalError) and not name):
        reason = UNAVAILABLE.get(primary, "the database cannot be used")
        return StoreUnavailable(f"profile store {path} is unavailable: {reason} ({name or 'sqlite'}: {error})")
    return StoreError(f"profile store {path} failed: {name or type(error).__name__}: {error}")


def connect(path: Path, busy_timeout: float, *, reader: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), foreign keys on, every
    commit fsynced (`synchronous=FULL`), waiting up to `busy_timeout` seconds for a lock."""
    connection = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("PRAGMA synchronous = FULL")
        if reader:
            connection.execute("PRAGMA query_only = ON")
    except BaseException:
        connection.close()
        raise
    return connection


def in_write_transaction(connection: sqlite3.Connection, work: Work[T]) -> T:
    """`work(connection)` inside `BEGIN IMMEDIATE` … `COMMIT`, rolled back when anything raises.
    IMMEDIATE takes the write lock first, so two writers never both read and then both write."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = work(connection)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            try:
                connection.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite already rolled back (disk full, I/O error); the original error says why
        raise
    return result


class SqlitePool:
    """Owns the writer connection, `readers` reader connections, and `readers + 1` threads."""

    def __init__(self, path: Path, busy_timeout: float, readers: int) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._readers_wanted = readers
        self._executor: ThreadPoolExecutor | None = None
        self._writer: asyncio.Queue[sqlite3.Connection] = asyncio.Queue()
        self._readers: asyncio.Queue[sqlite3.Connection] = asyncio.Queue()
        self._owned = {"writer": 0, "readers": 0}
        self._open = False
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file opened

    async def start(self, prepare: Work[None]) -> None:
        """Open the writer, run `prepare` on it (WAL, schema), then open the readers."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(self._readers_wanted + 1, thread_name_prefix="perg-sqlite")
        self._open = True
        try:
            writer = await self._call(lambda: connect(self.path, self.busy_timeout, reader=False))
            self._writer.put_nowait(writer)
            opened = os.stat(self.path)
            self._identity = (opened.st_dev, opened.st_ino)
            self._owned["writer"] = 1
            await self.write(prepare, transaction=False)
            for _ in range(self._readers_wanted):
                reader = await self._call(lambda: connect(self.path, self.busy_timeout, reader=True))
                self._readers.put_nowait(reader)
                self._owned["readers"] += 1
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Wait for the calls in flight, close every connection, end the threads."""
        if self._executor is None:
            return
        self._open = False
        connections = [await self._writer.get() for _ in range(self._owned["writer"])]
        connections += [await self._readers.get() for _ in range(self._owned["readers"])]
        self._owned = {"writer": 0, "readers": 0}
        for connection in connections:
            try:
                await self._call(connection.close)
            except StoreError as error:
                log.warning("store_close_failed", path=str(self.path), error=error.message)
        self._executor.shutdown(wait=True)
        self._executor = None

    async def read(self, work: Work[T]) -> T:
        """`work` on a reader connection, in autocommit mode (each statement its own snapshot)."""
        return await self._checked_out(self._readers, work)

    async def write(self, work: Work[T], *, transaction: bool = True) -> T:
        """`work` on the writer connection, inside `BEGIN IMMEDIATE` unless told otherwise; first
        the file is checked to be the one opened, and writable (`check_file`)."""
        if transaction:
            return await self._checked_out(self._writer, lambda connection: in_write_transaction(connection, self._checked(work)))
        return await self._checked_out(self._writer, self._checked(work))

    def _checked(self, work: Work[T]) -> Work[T]:
        def run(connection: sqlite3.Connection) -> T:
            self.check_file()
            return work(connection)

        return run

    def check_file(self) -> None:
        """`StoreUnavailable` unless the path still names the file opened (same device and inode)
        and it is writable. A deleted or replaced file would take every write that follows to an
        unlinked inode: acknowledged, then gone at the next start."""
        if self._identity is None:
            return
        try:
            now = os.stat(self.path)
        except OSError as error:
            raise StoreUnavailable(f"profile store {self.path} is unavailable: the database file is gone ({error.strerror})") from None
        if (now.st_dev, now.st_ino) != self._identity:
            raise StoreUnavailable(f"profile store {self.path} is unavailable: the database file was replaced since it was opened")
        if not now.st_mode & 0o222 or not os.access(self.path, os.W_OK):
            raise StoreUnavailable(f"profile store {self.path} is unavailable: the database file is read-only")

    async def _checked_out(self, queue: asyncio.Queue[sqlite3.Connection], work: Work[T]) -> T:
        if not self._open:
            raise StoreUnavailable(f"profile store {self.path} is closed")
        connection = await queue.get()
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, self._guarded, work, connection)
        except BaseException:
            queue.put_nowait(connection)
            raise
        future.add_done_callback(lambda _: queue.put_nowait(connection))
        return await asyncio.shield(future)

    async def _call(self, make: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, make)
        except sqlite3.Error as error:
            raise translate(error, self.path) from error

    def _guarded(self, work: Work[T], connection: sqlite3.Connection) -> T:
        try:
            return work(connection)
        except sqlite3.Error as error:
            raise translate(error, self.path) from error

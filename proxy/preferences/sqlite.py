"""`SqliteStore`: profiles and samples in one SQLite file, the embedded default.

Safe for any number of stores and processes on one file (`serve --workers N`): WAL journal (readers
never block the writer or each other), `BEGIN IMMEDIATE` for every read-modify-write (the write lock
is taken before reading, so concurrent patches serialize instead of overwriting each other), and a
busy timeout (default 5 s) for waiting on another process's write; past it, `StoreUnavailable`.

Durability: `synchronous=FULL`, so each commit fsyncs the WAL before returning. NORMAL would be
safe against a crash of the process but could lose the last commits on power loss or an OS crash,
and a profile write that returned 2xx must survive a restart of the machine too. The cost is one
fsync per write, on the admin and monitor paths only; the request path only reads.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from .models import JudgedSample, Preference, Profile, SampleCounts, SampleLabel, utcnow
from .rows import (
    COUNT_COLUMNS,
    GROUP_COLUMNS,
    LABEL_COLUMNS,
    PROFILE_COLUMNS,
    SAMPLE_COLUMNS,
    SAMPLE_KEY,
    buckets_from_rows,
    counts_from_rows,
    label_from_row,
    profiles_from_rows,
    sample_filters,
    sample_from_row,
    sample_values,
)
from .sqlite_pool import SqlitePool, in_write_transaction
from .store import ProfileEdit, Store
from .store_errors import InvalidCursor, StoreUnavailable

log = structlog.get_logger("perg.store")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            "CREATE TABLE profiles (user_id TEXT PRIMARY KEY, updated_at INTEGER NOT NULL)",
            "CREATE TABLE preferences (id TEXT PRIMARY KEY,"
            " user_id TEXT NOT NULL REFERENCES profiles (user_id) ON DELETE CASCADE,"
            " position INTEGER NOT NULL, text TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL)",
            "CREATE UNIQUE INDEX preferences_by_user ON preferences (user_id, position)",
        ),
    ),
    (
        2,
        (
            "CREATE TABLE samples (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, request_id TEXT NOT NULL,"
            " user_id TEXT, model TEXT NOT NULL, strategy TEXT NOT NULL, role TEXT NOT NULL, relevance TEXT NOT NULL,"
            " verdict TEXT, broken INTEGER, followed INTEGER, robust INTEGER, follow_score INTEGER,"
            " reasons TEXT NOT NULL, texts TEXT)",
            "CREATE INDEX samples_newest ON samples (created_at, id)",
            "CREATE INDEX samples_by_user ON samples (user_id)",
        ),
    ),
    (
        3,
        (
            "CREATE TABLE sample_labels (id TEXT PRIMARY KEY,"
            " sample_id TEXT NOT NULL REFERENCES samples (id) ON DELETE CASCADE,"
            " created_at INTEGER NOT NULL, follow_score INTEGER NOT NULL, consistency TEXT NOT NULL)",
            "CREATE INDEX sample_labels_by_sample ON sample_labels (sample_id)",
            "CREATE INDEX sample_labels_newest ON sample_labels (created_at, id)",
        ),
    ),
    (
        4,
        (  # judge fingerprints; existing samples keep NULL (distinct in a unique index, so all are kept)
            "ALTER TABLE samples ADD COLUMN fingerprint TEXT",
            "ALTER TABLE samples ADD COLUMN judges TEXT",
            "CREATE UNIQUE INDEX samples_verdict_once ON samples (request_id, role, fingerprint)",
        ),
    ),
)
IN_CHUNK = 500  # ids per `IN (...)` list, well under SQLite's limit on bound variables


def to_micros(moment: datetime) -> int:
    return (moment - EPOCH) // MICROSECOND


def from_micros(micros: int) -> datetime:
    return EPOCH + micros * MICROSECOND


class SqliteStore(Store):
    """Owns one SQLite database file (created with its directory when missing) and its pool."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0, readers: int = 2) -> None:
        super().__init__()
        self.path = Path(path)
        self._pool = SqlitePool(self.path, busy_timeout, readers)

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreUnavailable(f"profile store {self.path}: cannot create its directory: {error.strerror}") from error
        await self._pool.start(lambda db: _prepare(db, self._pool.busy_timeout))

    async def close(self) -> None:
        await self._pool.stop()

    async def ping(self) -> None:
        """Readable, and (`SqlitePool.check_file`) still the file opened, and writable."""
        await self._pool.read(lambda db: db.execute("SELECT count(*) FROM schema_version").fetchone())
        await asyncio.to_thread(self._pool.check_file)

    async def _get(self, user_id: str) -> Profile | None:
        sql = f"SELECT {PROFILE_COLUMNS} FROM profiles p LEFT JOIN preferences q ON q.user_id = p.user_id"
        sql += " WHERE p.user_id = ? ORDER BY q.position"
        rows = await self._pool.read(lambda db: db.execute(sql, (user_id,)).fetchall())
        profiles = profiles_from_rows(rows, from_micros)
        return profiles[0] if profiles else None

    async def _preference_texts(self, user_id: str) -> tuple[str, ...]:
        sql = "SELECT text FROM preferences WHERE user_id = ? ORDER BY position"
        rows = await self._pool.read(lambda db: db.execute(sql, (user_id,)).fetchall())
        return tuple(row[0] for row in rows)

    async def _delete(self, user_id: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM samples WHERE user_id = ?", (user_id,))
            return db.execute("DELETE FROM profiles WHERE user_id = ?", (user_id,)).rowcount > 0

        return await self._pool.write(work)

    async def _update(self, user_id: str, plan: ProfileEdit) -> Profile:
        return await self._pool.write(lambda db: _update_rows(db, user_id, plan))

    async def _list_profiles(self, limit: int, after: str | None) -> list[Profile]:
        where, values = ("WHERE user_id > ?", (after, limit)) if after is not None else ("", (limit,))
        page = f"SELECT user_id, updated_at FROM profiles {where} ORDER BY user_id LIMIT ?"
        sql = f"SELECT {PROFILE_COLUMNS} FROM ({page}) p LEFT JOIN preferences q ON q.user_id = p.user_id"
        sql += " ORDER BY p.user_id, q.position"
        rows = await self._pool.read(lambda db: db.execute(sql, values).fetchall())
        return profiles_from_rows(rows, from_micros)

    async def _insert_sample(self, sample: JudgedSample) -> bool:
        sql = f"INSERT INTO samples ({SAMPLE_COLUMNS}) VALUES ({', '.join('?' * 17)}) ON CONFLICT ({SAMPLE_KEY}) DO NOTHING"
        values = sample_values(sample, to_micros)
        return await self._pool.write(lambda db: db.execute(sql, values).rowcount) == 1

    async def _verdict_exists(self, request_id: str, role: str, fingerprint: str) -> bool:
        sql = "SELECT 1 FROM samples WHERE request_id = ? AND role = ? AND fingerprint = ? LIMIT 1"
        return await self._pool.read(lambda db: db.execute(sql, (request_id, role, fingerprint)).fetchone()) is not None

    async def _list_samples(
        self, verdict: str | None, strategy: str | None, role: str | None, limit: int, after: str | None
    ) -> list[JudgedSample]:
        filters = sample_filters(verdict, strategy, role)
        where = [f"{column} = ?" for column, _ in filters]
        values: list[object] = [value for _, value in filters]
        if after is not None:
            where.append("(created_at, id) < (?, ?)")
            values += [await self._cursor_time(after), after]
        sql = f"SELECT {SAMPLE_COLUMNS} FROM samples"
        sql += f" WHERE {' AND '.join(where)}" if where else ""
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        rows = await self._pool.read(lambda db: db.execute(sql, (*values, limit)).fetchall())
        return [sample_from_row(row, from_micros) for row in rows]

    async def _cursor_time(self, after: str) -> int:
        sql = "SELECT created_at FROM samples WHERE id = ?"
        row = await self._pool.read(lambda db: db.execute(sql, (after,)).fetchone())
        if row is None:
            raise InvalidCursor(after)
        return int(row[0])

    async def _sample_counts(self, since: datetime) -> list[SampleCounts]:
        sql = f"SELECT {COUNT_COLUMNS} FROM samples WHERE created_at >= ? GROUP BY {GROUP_COLUMNS}"
        rows = await self._pool.read(lambda db: db.execute(sql, (to_micros(since),)).fetchall())
        return counts_from_rows(rows)

    async def _prune_samples(self, keep: int) -> int:
        oldest_kept = "SELECT created_at, id FROM samples ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET ?"
        sql = f"DELETE FROM samples WHERE (created_at, id) <= ({oldest_kept})"
        return await self._pool.write(lambda db: db.execute(sql, (keep,)).rowcount)

    async def _samples_by_id(self, ids: Sequence[str]) -> list[JudgedSample]:
        rows = await self._in_chunks(f"SELECT {SAMPLE_COLUMNS} FROM samples WHERE id IN", ids)
        samples = [sample_from_row(row, from_micros) for row in rows]
        return sorted(samples, key=lambda sample: (sample.created_at, sample.id), reverse=True)

    async def _samples_by_request(self, request_ids: Sequence[str]) -> list[JudgedSample]:
        rows = await self._in_chunks(f"SELECT {SAMPLE_COLUMNS} FROM samples WHERE request_id IN", request_ids)
        samples = [sample_from_row(row, from_micros) for row in rows]
        return sorted(samples, key=lambda sample: (sample.created_at, sample.id), reverse=True)

    async def _insert_label(self, label: SampleLabel) -> bool:
        sql = f"INSERT INTO sample_labels ({LABEL_COLUMNS}) SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM samples WHERE id = ?)"
        values = (label.id, label.sample_id, to_micros(label.created_at), label.follow_score, label.consistency, label.sample_id)
        return await self._pool.write(lambda db: db.execute(sql, values).rowcount) == 1

    async def _labels_of(self, sample_ids: Sequence[str]) -> list[SampleLabel]:
        rows = await self._in_chunks(f"SELECT {LABEL_COLUMNS} FROM sample_labels WHERE sample_id IN", sample_ids)
        labels = [label_from_row(row, from_micros) for row in rows]
        return sorted(labels, key=lambda label: (label.created_at, label.id))

    async def _list_labels(self, limit: int) -> list[SampleLabel]:
        sql = f"SELECT {LABEL_COLUMNS} FROM sample_labels ORDER BY created_at DESC, id DESC LIMIT ?"
        rows = await self._pool.read(lambda db: db.execute(sql, (limit,)).fetchall())
        return [label_from_row(row, from_micros) for row in rows]

    async def _sample_buckets(self, since: datetime, until: datetime, width_micros: int) -> list[tuple[int, SampleCounts]]:
        start = to_micros(since)
        sql = f"SELECT (created_at - ?) / ?, {COUNT_COLUMNS} FROM samples WHERE created_at >= ? AND created_at < ? GROUP BY 1, {GROUP_COLUMNS}"
        values = (start, width_micros, start, to_micros(until))
        return buckets_from_rows(await self._pool.read(lambda db: db.execute(sql, values).fetchall()))

    async def _in_chunks(self, select: str, ids: Sequence[str]) -> list[tuple]:
        """The rows of `select (?, …)` over `ids`, IN_CHUNK ids per query."""
        rows: list[tuple] = []
        unique = list(dict.fromkeys(ids))
        for at in range(0, len(unique), IN_CHUNK):
            rows += await self._pool.read(functools.partial(_select_in, select, unique[at : at + IN_CHUNK]))
        return rows


def _select_in(select: str, ids: list[str], db: sqlite3.Connection) -> list[tuple]:
    return db.execute(f"{select} ({', '.join('?' * len(ids))})", ids).fetchall()


def _update_rows(db: sqlite3.Connection, user_id: str, plan: ProfileEdit) -> Profile:
    """Inside the write transaction: read, plan, replace the user's rows."""
    sql = "SELECT id, text, created_at, updated_at FROM preferences WHERE user_id = ? ORDER BY position"
    existing = [
        Preference(id=id_, text=text, created_at=from_micros(created), updated_at=from_micros(changed))
        for id_, text, created, changed in db.execute(sql, (user_id,))
    ]
    now = utcnow()
    preferences = plan(existing, now)
    db.execute(
        "INSERT INTO profiles (user_id, updated_at) VALUES (?, ?) ON CONFLICT (user_id) DO UPDATE SET updated_at = excluded.updated_at",
        (user_id, to_micros(now)),
    )
    db.execute("DELETE FROM preferences WHERE user_id = ?", (user_id,))
    db.executemany(
        "INSERT INTO preferences (id, user_id, position, text, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
        [(p.id, user_id, position, p.text, to_micros(p.created_at), to_micros(p.updated_at)) for position, p in enumerate(preferences)],
    )
    return Profile(user_id=user_id, preferences=tuple(preferences), updated_at=now)


def _prepare(db: sqlite3.Connection, busy_timeout: float) -> None:
    """WAL on (kept in the file), then the pending migrations in one IMMEDIATE transaction, so
    processes opening the file together serialize and each migration runs exactly once."""
    mode = _enable_wal(db, time.monotonic() + busy_timeout)
    if mode != "wal":
        log.warning("store_no_wal", journal_mode=mode, detail="readers will block writers")
    in_write_transaction(db, _migrate)


def _enable_wal(db: sqlite3.Connection, deadline: float) -> str:
    """Switch a new file to WAL. Two connections switching at once can deadlock, and SQLite then
    fails one at once instead of calling the busy handler, so the switch is retried until
    `deadline`."""
    while True:
        try:
            mode = str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            if mode == "wal":
                return mode
            return str(db.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        except sqlite3.OperationalError as error:
            if getattr(error, "sqlite_errorname", "") != "SQLITE_BUSY" or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _migrate(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
    applied = {row[0] for row in db.execute("SELECT version FROM schema_version")}
    for version, statements in MIGRATIONS:
        if version in applied:
            continue
        for statement in statements:
            db.execute(statement)
        db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, to_micros(utcnow())))
        log.info("store_migrated", backend="sqlite", version=version)
    newest = max(applied, default=0)
    if newest > MIGRATIONS[-1][0]:
        log.warning("store_schema_newer", backend="sqlite", version=newest, known=MIGRATIONS[-1][0])

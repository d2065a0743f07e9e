"""`PostgresStore`: profiles and samples in PostgreSQL, shared by every replica.

An asyncpg pool per process. Read-modify-writes run in one transaction that first upserts the
profile row (`INSERT … ON CONFLICT DO UPDATE`), which both creates a missing profile and takes its
row lock, so concurrent patches on one user, from any replica, serialize; under READ COMMITTED each
later statement sees what the previous holder committed. A method that returned has committed.

Timeouts, so that a dead database fails a call instead of hanging it: connecting 3 s (a refused
port fails at once; a black-holed host after 3 s), waiting for a pooled connection 5 s, any one
statement 10 s. Past them, or on any connection, resource, disk or shutdown error, the call raises
`StoreUnavailable`; the pool replaces broken connections, so calls succeed again once the database
is back, without a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg
import structlog
from yarl import URL

from .models import JudgedSample, Preference, Profile, SampleCounts, SampleLabel, utcnow
from .postgres_schema import migrate, quote_identifier
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
from .store import ProfileEdit, Store
from .store_errors import InvalidCursor, StoreError, StoreUnavailable

log = structlog.get_logger("perg.store")
DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError, OSError, TimeoutError)
UNAVAILABLE_CLASSES = {"08", "40", "53", "57", "58"}  # connection, rollback, resources, shutdown, system/I-O
UNAVAILABLE_STATES = {"25006"}  # read-only transaction (a standby, or default_transaction_read_only)


def translate(error: BaseException, where: str) -> StoreError:
    """The store error for an asyncpg / socket error; unavailable unless it is a bug of ours."""
    if isinstance(error, asyncpg.PostgresError):
        state = error.sqlstate or ""
        detail = f"{type(error).__name__} ({state}): {error}"
        if state[:2] in UNAVAILABLE_CLASSES or state in UNAVAILABLE_STATES:
            return StoreUnavailable(f"profile store {where} is unavailable: {detail}")
        return StoreError(f"profile store {where} failed: {detail}")
    if isinstance(error, asyncpg.InterfaceError) and type(error) is not asyncpg.InterfaceError:
        # its subclasses are our mistakes (a value of the wrong type, a bad option), not outages
        return StoreError(f"profile store {where} failed: {type(error).__name__}: {error}")
    if isinstance(error, TimeoutError):
        return StoreUnavailable(f"profile store {where} is unavailable: no answer within the timeout")
    return StoreUnavailable(f"profile store {where} is unavailable: {type(error).__name__}: {error}")


def describe(dsn: str) -> str:
    """host:port/database of a DSN, never its password, for messages and logs."""
    try:
        url = URL(dsn)
        return f"postgresql://{url.host or 'localhost'}:{url.port or 5432}{url.path}"
    except ValueError:
        return "postgresql"


class PostgresStore(Store):
    """Owns an asyncpg pool on `dsn`; its tables live in `schema` (created when missing) or, by
    default, in the first schema of the connection's search_path."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        connect_timeout: float = 3.0,
        acquire_timeout: float = 5.0,
        command_timeout: float = 10.0,
        max_connections: int = 10,
    ) -> None:
        super().__init__()
        self._dsn = dsn
        self.where = describe(dsn)
        self.schema = schema
        self._connect_timeout = connect_timeout
        self._acquire_timeout = acquire_timeout
        self._command_timeout = command_timeout
        self._max_connections = max_connections
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        settings = {"search_path": quote_identifier(self.schema)} if self.schema else None
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._max_connections,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                server_settings=settings,
            )
        except DRIVER_ERRORS as error:
            raise translate(error, self.where) from error
        try:
            async with self._transaction() as db:
                await migrate(db, self.schema, _lock_key(self.schema))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self._command_timeout)
        except (TimeoutError, *DRIVER_ERRORS) as error:
            log.warning("store_close_failed", store=self.where, error=str(error))
            pool.terminate()

    async def ping(self) -> None:
        async with self._connection() as db:
            await db.fetchval("SELECT 1", timeout=self._acquire_timeout)

    async def _get(self, user_id: str) -> Profile | None:
        sql = f"SELECT {PROFILE_COLUMNS} FROM profiles p LEFT JOIN preferences q ON q.user_id = p.user_id"
        sql += " WHERE p.user_id = $1 ORDER BY q.position"
        async with self._connection() as db:
            rows = await db.fetch(sql, user_id)
        profiles = profiles_from_rows(rows, _same)
        return profiles[0] if profiles else None

    async def _preference_texts(self, user_id: str) -> tuple[str, ...]:
        async with self._connection() as db:
            rows = await db.fetch("SELECT text FROM preferences WHERE user_id = $1 ORDER BY position", user_id)
        return tuple(row[0] for row in rows)

    async def _delete(self, user_id: str) -> bool:
        async with self._transaction() as db:
            await db.execute("DELETE FROM samples WHERE user_id = $1", user_id)
            status = await db.execute("DELETE FROM profiles WHERE user_id = $1", user_id)
        return _affected(status) > 0

    async def _update(self, user_id: str, plan: ProfileEdit) -> Profile:
        lock = "INSERT INTO profiles (user_id, updated_at) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE SET updated_at = profiles.updated_at"
        read = "SELECT id, text, created_at, updated_at FROM preferences WHERE user_id = $1 ORDER BY position"
        async with self._transaction() as db:
            await db.execute(lock, user_id, utcnow())
            existing = [Preference(id=r[0], text=r[1], created_at=r[2], updated_at=r[3]) for r in await db.fetch(read, user_id)]
            now = utcnow()
            preferences = plan(existing, now)
            await db.execute("UPDATE profiles SET updated_at = $2 WHERE user_id = $1", user_id, now)
            await db.execute("DELETE FROM preferences WHERE user_id = $1", user_id)
            if preferences:
                await db.executemany(
                    "INSERT INTO preferences (id, user_id, position, text, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)",
                    [(p.id, user_id, i, p.text, p.created_at, p.updated_at) for i, p in enumerate(preferences)],
                )
        return Profile(user_id=user_id, preferences=tuple(preferences), updated_at=now)

    async def _list_profiles(self, limit: int, after: str | None) -> list[Profile]:
        where, values = ("WHERE user_id > $2", (limit, after)) if after is not None else ("", (limit,))
        page = f"SELECT user_id, updated_at FROM profiles {where} ORDER BY user_id LIMIT $1"
        sql = f"SELECT {PROFILE_COLUMNS} FROM ({page}) p LEFT JOIN preferences q ON q.user_id = p.user_id"
        sql += " ORDER BY p.user_id, q.position"
        async with self._connection() as db:
            rows = await db.fetch(sql, *values)
        return profiles_from_rows(rows, _same)

    async def _insert_sample(self, sample: JudgedSample) -> bool:
        placeholders = ", ".join(f"${i}" for i in range(1, 18))
        sql = f"INSERT INTO samples ({SAMPLE_COLUMNS}) VALUES ({placeholders}) ON CONFLICT ({SAMPLE_KEY}) DO NOTHING"
        async with self._connection() as db:
            status = await db.execute(sql, *sample_values(sample, _same))
        return str(status).endswith(" 1")

    async def _verdict_exists(self, request_id: str, role: str, fingerprint: str) -> bool:
        sql = "SELECT 1 FROM samples WHERE request_id = $1 AND role = $2 AND fingerprint = $3 LIMIT 1"
        async with self._connection() as db:
            return await db.fetchval(sql, request_id, role, fingerprint) is not None

    async def _list_samples(
        self, verdict: str | None, strategy: str | None, role: str | None, limit: int, after: str | None
    ) -> list[JudgedSample]:
        filters = sample_filters(verdict, strategy, role)
        where = [f"{column} = ${i}" for i, (column, _) in enumerate(filters, start=1)]
        values: list[object] = [value for _, value in filters]
        async with self._connection() as db:
            if after is not None:
                created = await db.fetchval("SELECT created_at FROM samples WHERE id = $1", after)
                if created is None:
                    raise InvalidCursor(after)
                where.append(f"(created_at, id) < (${len(values) + 1}, ${len(values) + 2})")
                values += [created, after]
            sql = f"SELECT {SAMPLE_COLUMNS} FROM samples"
            sql += f" WHERE {' AND '.join(where)}" if where else ""
            sql += f" ORDER BY created_at DESC, id DESC LIMIT ${len(values) + 1}"
            rows = await db.fetch(sql, *values, limit)
        return [sample_from_row(row, _same) for row in rows]

    async def _sample_counts(self, since: datetime) -> list[SampleCounts]:
        sql = f"SELECT {COUNT_COLUMNS} FROM samples WHERE created_at >= $1 GROUP BY {GROUP_COLUMNS}"
        async with self._connection() as db:
            return counts_from_rows(await db.fetch(sql, since))

    async def _prune_samples(self, keep: int) -> int:
        oldest_kept = "SELECT created_at, id FROM samples ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET $1"
        async with self._connection() as db:
            status = await db.execute(f"DELETE FROM samples WHERE (created_at, id) <= ({oldest_kept})", keep)
        return _affected(status)

    async def _samples_by_id(self, ids: Sequence[str]) -> list[JudgedSample]:
        sql = f"SELECT {SAMPLE_COLUMNS} FROM samples WHERE id = ANY($1::text[]) ORDER BY created_at DESC, id DESC"
        async with self._connection() as db:
            rows = await db.fetch(sql, list(ids))
        return [sample_from_row(row, _same) for row in rows]

    async def _samples_by_request(self, request_ids: Sequence[str]) -> list[JudgedSample]:
        sql = f"SELECT {SAMPLE_COLUMNS} FROM samples WHERE request_id = ANY($1::text[]) ORDER BY created_at DESC, id DESC"
        async with self._connection() as db:
            rows = await db.fetch(sql, list(request_ids))
        return [sample_from_row(row, _same) for row in rows]

    async def _insert_label(self, label: SampleLabel) -> bool:
        sql = f"INSERT INTO sample_labels ({LABEL_COLUMNS}) SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM samples WHERE id = $2)"
        async with self._connection() as db:
            status = await db.execute(sql, label.id, label.sample_id, label.created_at, label.follow_score, label.consistency)
        return _affected(status) == 1

    async def _labels_of(self, sample_ids: Sequence[str]) -> list[SampleLabel]:
        sql = f"SELECT {LABEL_COLUMNS} FROM sample_labels WHERE sample_id = ANY($1::text[]) ORDER BY created_at, id"
        async with self._connection() as db:
            rows = await db.fetch(sql, list(sample_ids))
        return [label_from_row(row, _same) for row in rows]

    async def _list_labels(self, limit: int) -> list[SampleLabel]:
        sql = f"SELECT {LABEL_COLUMNS} FROM sample_labels ORDER BY created_at DESC, id DESC LIMIT $1"
        async with self._connection() as db:
            rows = await db.fetch(sql, limit)
        return [label_from_row(row, _same) for row in rows]

    async def _sample_buckets(self, since: datetime, until: datetime, width_micros: int) -> list[tuple[int, SampleCounts]]:
        bucket = "floor(extract(epoch FROM created_at - $1::timestamptz) * 1000000 / $3::bigint)::bigint"
        sql = f"SELECT {bucket}, {COUNT_COLUMNS} FROM samples WHERE created_at >= $1 AND created_at < $2 GROUP BY 1, {GROUP_COLUMNS}"
        async with self._connection() as db:
            return buckets_from_rows(await db.fetch(sql, since, until, width_micros))

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; every driver error inside becomes a store error."""
        if self._pool is None:
            raise StoreUnavailable(f"profile store {self.where} is not open")
        try:
            async with self._pool.acquire(timeout=self._acquire_timeout) as connection:
                yield connection
        except DRIVER_ERRORS as error:
            raise translate(error, self.where) from error

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._connection() as connection, connection.transaction():
            yield connection


def _same(value: datetime) -> datetime:
    return value


def _affected(status: str) -> int:
    """The row count of a command status such as `DELETE 3`."""
    return int(status.rsplit(" ", 1)[-1])


def _lock_key(schema: str | None) -> int:
    """The advisory-lock key that serializes migrations of one schema across processes."""
    digest = hashlib.sha256(f"perg-proxy/schema/{schema or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)

"""The PostgreSQL schema as numbered migrations, and `migrate()`, which applies the pending ones.

`migrate` runs in the caller's transaction after taking a transaction-scoped advisory lock, so
replicas starting together serialize: the first applies, the others find the versions recorded.
Migrations are additive, so an older proxy keeps working on a newer schema (it logs a warning).
"""

from __future__ import annotations

import asyncpg
import structlog

from .models import utcnow

log = structlog.get_logger("perg.store")

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            "CREATE TABLE profiles (user_id text PRIMARY KEY, updated_at timestamptz NOT NULL)",
            "CREATE TABLE preferences (id text PRIMARY KEY,"
            " user_id text NOT NULL REFERENCES profiles (user_id) ON DELETE CASCADE,"
            " position integer NOT NULL, text text NOT NULL,"
            " created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL)",
            "CREATE UNIQUE INDEX preferences_by_user ON preferences (user_id, position)",
        ),
    ),
    (
        2,
        (
            "CREATE TABLE samples (id text PRIMARY KEY, created_at timestamptz NOT NULL, request_id text NOT NULL,"
            " user_id text, model text NOT NULL, strategy text NOT NULL, role text NOT NULL, relevance text NOT NULL,"
            " verdict text, broken boolean, followed boolean, robust boolean, follow_score smallint,"
            " reasons text NOT NULL, texts text)",
            "CREATE INDEX samples_newest ON samples (created_at, id)",
            "CREATE INDEX samples_by_user ON samples (user_id)",
        ),
    ),
    (
        3,
        (
            "CREATE TABLE sample_labels (id text PRIMARY KEY,"
            " sample_id text NOT NULL REFERENCES samples (id) ON DELETE CASCADE,"
            " created_at timestamptz NOT NULL, follow_score smallint NOT NULL, consistency text NOT NULL)",
            "CREATE INDEX sample_labels_by_sample ON sample_labels (sample_id)",
            "CREATE INDEX sample_labels_newest ON sample_labels (created_at, id)",
        ),
    ),
    (
        4,
        (  # judge fingerprints; existing samples keep NULL (distinct in a unique index, so all are kept)
            "ALTER TABLE samples ADD COLUMN fingerprint text",
            "ALTER TABLE samples ADD COLUMN judges text",
            "CREATE UNIQUE INDEX samples_verdict_once ON samples (request_id, role, fingerprint)",
        ),
    ),
)


async def migrate(db: asyncpg.Connection, schema: str | None, lock_key: int) -> None:
    """Create `schema` when given, then apply the pending migrations; call inside a transaction."""
    await db.execute("SELECT pg_advisory_xact_lock($1)", lock_key)
    if schema is not None:
        await db.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(schema)}")
    await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL)")
    applied = {row[0] for row in await db.fetch("SELECT version FROM schema_version")}
    for version, statements in MIGRATIONS:
        if version in applied:
            continue
        for statement in statements:
            await db.execute(statement)
        await db.execute("INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)", version, utcnow())
        log.info("store_migrated", backend="postgres", version=version)
    newest = max(applied, default=0)
    if newest > MIGRATIONS[-1][0]:
        log.warning("store_schema_newer", backend="postgres", version=newest, known=MIGRATIONS[-1][0])


def quote_identifier(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'

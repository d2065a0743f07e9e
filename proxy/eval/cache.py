"""The benchmark's response cache: one SQLite file, so an interrupted run resumes where it stopped.

An entry is one model call's outcome (an answer, a follow verdict, an extracted letter), keyed by
what decides it: the kind of call, the item, the setting, the strategy, the model, the prompt
version, and a fingerprint of every other input (the prompt text, the preferences, the generation
options). Change any of them and the entry is simply not found, so a stale answer is never reused.

Each `put` commits on its own: a run killed at any moment loses at most the call in flight. Only
outcomes worth keeping are stored (see the runner); transient failures never are.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    item_id TEXT NOT NULL,
    setting TEXT NOT NULL,
    strategy TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""


def fingerprint(*parts: Any) -> str:
    """A short digest of JSON-serialisable inputs (dict keys sorted, so order does not matter)."""
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]


class CacheKey(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str  # answer | follow | extract
    item_id: str
    setting: str  # "none" for the no-preference baseline
    strategy: str
    model: str
    prompt_version: str
    inputs: str  # fingerprint() of everything else the call depends on

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class ResponseCache:
    """Get and put JSON objects by `CacheKey`; counts hits and misses for the run's report."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)
        self.hits = 0
        self.misses = 0

    def get(self, key: CacheKey) -> dict[str, Any] | None:
        row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key.digest,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return orjson.loads(row[0])

    def put(self, key: CacheKey, value: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key.digest,
                key.kind,
                key.item_id,
                key.setting,
                key.strategy,
                key.model,
                key.prompt_version,
                orjson.dumps(value).decode(),
                time.time(),
            ),
        )

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""SQLite store failures: locked past the busy timeout, disk full, unusable files, a killed
process. Each is a typed `StoreUnavailable` (503), and every write that returned is still there."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from proxy.preferences import StoreError, StoreUnavailable
from proxy.preferences.sqlite import SqliteStore
from proxy.preferences.sqlite_pool import translate
from tests.store_fixtures import ROOT, stop_processes


def integrity(path: Path) -> str:
    with closing(sqlite3.connect(path)) as raw:
        return raw.execute("PRAGMA integrity_check").fetchone()[0]


async def test_a_write_lock_held_past_the_busy_timeout_is_unavailable_and_data_survives(tmp_path):
    path = tmp_path / "profiles.db"
    store = SqliteStore(path, busy_timeout=0.3)
    await store.open()
    try:
        before = await store.put("alice", ["kept"])
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as raised:
                await store.patch("alice", add=["never stored"])
            assert 0.25 <= time.monotonic() - started < 3
            assert raised.value.status == 503 and raised.value.code == "store_unavailable"
            assert "locked" in raised.value.message and "SQLITE_BUSY" in raised.value.message
            assert await store.get("alice") == before  # WAL: reads go on while the lock is held
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert (await store.patch("alice", add=["after"])).texts == ("kept", "after")
    finally:
        await store.close()
    assert integrity(path) == "ok"


async def test_a_file_held_exclusively_at_start_is_unavailable_until_released(tmp_path):
    path = tmp_path / "profiles.db"
    async with SqliteStore(path) as store:
        await store.put("alice", ["kept"])
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("COMMIT")  # the exclusive lock stays with the connection
    store = SqliteStore(path, busy_timeout=0.2)
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.open()
        with pytest.raises(StoreUnavailable, match="closed"):
            await store.ping()
    finally:
        holder.close()
    async with store:
        await store.ping()
        assert await store.preference_texts("alice") == ("kept",)


DISK_FULL_WORKER = r"""
import asyncio, resource, sys
from proxy.preferences import StoreUnavailable
from proxy.preferences.sqlite import SqliteStore

async def main(path, limit):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    async with SqliteStore(path) as store:
        for i in range(500):
            try:
                profile = await store.patch("alice", add=[f"{i:04d}" + "x" * 2000])
            except StoreUnavailable as error:
                print("unavailable", error.message, flush=True)
                print("read", len(await store.preference_texts("alice")), flush=True)
                return
            print("acked", profile.preferences[-1].id, flush=True)
    print("never full", flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_a_full_disk_is_unavailable_and_loses_no_acknowledged_write(tmp_path):
    """A child process whose files may not grow past a limit (RLIMIT_FSIZE: writes fail as on a
    full disk) patches until the store refuses; everything it was told was stored is there."""
    path = tmp_path / "profiles.db"
    async with SqliteStore(path) as store:
        await store.put("alice", ["seed"])
    limit = path.stat().st_size + 96 * 1024
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DISK_FULL_WORKER, str(path), str(limit), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await stop_processes([process])
    lines = [line for line in out.decode().splitlines() if line.split(" ", 1)[0] in {"acked", "unavailable", "read", "never"}]
    acked = [line.split()[1] for line in lines if line.startswith("acked ")]
    assert process.returncode == 0, err.decode()
    assert len(acked) >= 2 and lines[len(acked)].startswith("unavailable "), lines
    assert "I/O error" in lines[len(acked)] or "full" in lines[len(acked)]
    assert lines[len(acked) + 1] == f"read {len(acked) + 1}"  # reads still work: seed + acked
    async with SqliteStore(path) as store:
        profile = await store.get("alice")
        assert profile is not None
        assert [p.id for p in profile.preferences[1:]] == acked
        assert (await store.patch("alice", add=["room again"])).texts[-1] == "room again"
    assert integrity(path) == "ok"


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 256 KiB tmpfs mounted for the test (needs root and mount rights; skipped otherwise)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, timeout=10)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        done = subprocess.run(["umount", str(mount)], capture_output=True, timeout=10)
        if done.returncode != 0:  # something still holds a file: detach now, freed when released
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=10)
        assert done.returncode == 0, f"the tmpfs was busy at the end of the test: {done.stderr.decode()}"


async def test_a_really_full_disk_is_unavailable_and_recovers_when_space_returns(small_disk: Path):
    path = small_disk / "profiles.db"
    store = SqliteStore(path)
    await store.open()
    acked: list[str] = []
    try:
        with pytest.raises(StoreUnavailable) as raised:
            for i in range(1000):
                acked.append((await store.patch("alice", add=[f"{i:04d}" + "y" * 4000])).preferences[-1].id)
        assert "full" in raised.value.message and "SQLITE_FULL" in raised.value.message
        assert len(await store.preference_texts("alice")) == len(acked) > 0
        await asyncio.to_thread(
            subprocess.run, ["mount", "-o", "remount,size=8m", str(small_disk)], capture_output=True, timeout=10, check=True
        )
        assert (await store.patch("alice", add=["room again"])).texts[-1] == "room again"
    finally:
        await store.close()
    async with SqliteStore(path) as reopened:
        profile = await reopened.get("alice")
        assert profile is not None and [p.id for p in profile.preferences][:-1] == acked
    assert integrity(path) == "ok"


KILL_WORKER = r"""
import asyncio, sys
from proxy.preferences.sqlite import SqliteStore

async def main(path):
    async with SqliteStore(path) as store:
        for i in range(100000):
            profile = await store.patch("alice", add=[f"write {i}"])
            print("acked", profile.preferences[-1].id, flush=True)

asyncio.run(main(sys.argv[1]))
"""


async def test_writes_acknowledged_before_a_kill_survive_it(tmp_path):
    """SIGKILL mid-stream of writes (no close, no checkpoint): every acknowledged write is there."""
    path = tmp_path / "profiles.db"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILL_WORKER, str(path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    acked: list[str] = []
    try:
        assert process.stdout is not None
        while len(acked) < 30:
            line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
            assert line, (await process.stderr.read()).decode() if process.stderr else "worker ended"
            if line.startswith("acked "):
                acked.append(line.split()[1])
        process.kill()
        rest, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        await stop_processes([process])
    acked += [line.split()[1] for line in rest.decode().splitlines() if line.startswith("acked ")]
    async with SqliteStore(path) as store:
        profile = await store.get("alice")
    assert profile is not None
    stored = [p.id for p in profile.preferences]
    assert stored[: len(acked)] == acked and len(stored) - len(acked) <= 1
    assert integrity(path) == "ok"


async def test_a_path_that_cannot_hold_a_database_is_unavailable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable, match="cannot create its directory"):
        await SqliteStore(blocker / "profiles.db").open()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an SQLite database, just bytes " * 200)
    with pytest.raises(StoreUnavailable, match="not a SQLite database"):
        await SqliteStore(garbage).open()
    with pytest.raises(StoreUnavailable, match="cannot be opened"):
        await SqliteStore(tmp_path).open()  # a directory


def _error(kind: type[sqlite3.Error], name: str, message: str) -> sqlite3.Error:
    error = kind(message)
    error.sqlite_errorname = name  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize(
    ("error", "expected", "words"),
    [
        (_error(sqlite3.OperationalError, "SQLITE_BUSY", "database is locked"), StoreUnavailable, "locked"),
        (_error(sqlite3.OperationalError, "SQLITE_FULL", "database or disk is full"), StoreUnavailable, "full"),
        (_error(sqlite3.OperationalError, "SQLITE_IOERR_WRITE", "disk I/O error"), StoreUnavailable, "I/O"),
        (_error(sqlite3.OperationalError, "SQLITE_READONLY", "attempt to write a readonly database"), StoreUnavailable, "read-only"),
        (_error(sqlite3.OperationalError, "SQLITE_READONLY_DBMOVED", "readonly"), StoreUnavailable, "read-only"),
        (_error(sqlite3.OperationalError, "SQLITE_CANTOPEN", "unable to open database file"), StoreUnavailable, "opened"),
        (_error(sqlite3.DatabaseError, "SQLITE_CORRUPT", "database disk image is malformed"), StoreUnavailable, "corrupt"),
        (_error(sqlite3.DatabaseError, "SQLITE_NOTADB", "file is not a database"), StoreUnavailable, "not a SQLite"),
        (sqlite3.OperationalError("something without a code"), StoreUnavailable, "cannot be used"),
        (_error(sqlite3.OperationalError, "SQLITE_ERROR", "no such table: profiles"), StoreError, "no such table"),
        (_error(sqlite3.IntegrityError, "SQLITE_CONSTRAINT_PRIMARYKEY", "UNIQUE constraint failed"), StoreError, "UNIQUE"),
        (sqlite3.ProgrammingError("Incorrect number of bindings supplied"), StoreError, "bindings"),
    ],
)
def test_sqlite_errors_map_to_store_errors(error: sqlite3.Error, expected: type[StoreError], words: str):
    translated = translate(error, Path("/data/profiles.db"))
    assert type(translated) is expected
    assert translated.status == (503 if expected is StoreUnavailable else 500)
    assert words in translated.message and "/data/profiles.db" in translated.message


@pytest.mark.parametrize("attack", ["delete_directory", "replace_file", "read_only"])
async def test_a_database_file_gone_replaced_or_read_only_is_unavailable(tmp_path, attack):
    """Writes to a deleted or replaced file go to an unlinked inode: acknowledged, then lost at
    the next start. The store notices before every write and in its ping (readiness)."""
    import shutil

    path = tmp_path / "db" / "profiles.db"
    store = SqliteStore(path)
    await store.open()
    try:
        await store.put("alice", ["kept"])
        await store.ping()
        if attack == "delete_directory":
            shutil.rmtree(path.parent)
        elif attack == "replace_file":
            shutil.copy(path, tmp_path / "copy.db")
            os.replace(tmp_path / "copy.db", path)
        else:
            path.chmod(0o444)
        with pytest.raises(StoreUnavailable) as raised:
            await store.put("bob", ["would be lost"])
        assert raised.value.status == 503
        assert {"delete_directory": "gone", "replace_file": "replaced", "read_only": "read-only"}[attack] in raised.value.message
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()
        if path.exists():
            path.chmod(0o644)


def test_the_proxy_answers_503_and_fails_readiness_when_its_database_goes(start_proxy, tmp_path):
    import shutil

    import httpx2

    from tests.conftest import ADMIN_KEY

    proxy = start_proxy(profiles={"backend": "sqlite", "path": str(tmp_path / "db" / "profiles.db")})
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert httpx2.put(f"{proxy.url}/perg/profiles/alice", json={"preferences": ["x"]}, headers=admin).status_code == 200
    assert httpx2.get(f"{proxy.url}/readyz").json()["store"] == "ok"
    shutil.rmtree(tmp_path / "db")
    put = httpx2.put(f"{proxy.url}/perg/profiles/bob", json={"preferences": ["y"]}, headers=admin)
    assert put.status_code == 503 and put.json()["error"]["code"] == "store_unavailable"
    time.sleep(1.2)  # past the cached readiness probe
    ready = httpx2.get(f"{proxy.url}/readyz")
    assert ready.status_code == 503 and ready.json()["store"] == "store_unavailable"

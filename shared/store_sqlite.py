"""The embedded SQLite store (a schema Cloudflare D1 also accepts): the default.

Writes go through one thread per process. Several processes share the file: WAL, a busy
timeout, ``BEGIN IMMEDIATE`` and a retry loop keep "database is locked" away from tasks.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from shared import logs
from shared.store import (
    MIGRATIONS_DIR,
    Statement,
    Store,
    StoreMoved,
    Write,
    check_table,
    write_statements,
)

log = logs.get("sluice.store")
T = TypeVar("T")

_SQL = write_statements(lambda _n: "?")


def connect(path: str) -> sqlite3.Connection:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def file_id(path: str) -> tuple[int, int]:
    """The file's identity: device and inode. A file deleted, or replaced by another (a
    restored copy, a new empty database), changes it; one renamed back is itself again."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _retry_locked(fn: Callable[[], T], attempts: int = 50) -> T:
    """SQLite's busy handler does not cover every lock upgrade: retry the rest ourselves."""
    delay = 0.005
    for attempt in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            transient = "locked" in str(exc) or "busy" in str(exc)
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay = min(0.25, delay * 2)
    raise AssertionError("unreachable")


def _transaction(conn: sqlite3.Connection, body: Callable[[], T]) -> T:
    def run() -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = body()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return out
    return _retry_locked(run)


def split_statements(sql: str) -> list[str]:
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def migration_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def apply_migrations(conn: sqlite3.Connection, folder: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending ``NNNN_name.sql`` files and record them the way wrangler does."""
    def body() -> list[str]:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS d1_migrations (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "name TEXT UNIQUE, applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)")
        done = {r[0] for r in conn.execute("SELECT name FROM d1_migrations")}
        applied = []
        for path in migration_files(folder):
            if path.name in done:
                continue
            for statement in split_statements(path.read_text()):
                conn.execute(statement)
            conn.execute("INSERT INTO d1_migrations (name) VALUES (?)", (path.name,))
            applied.append(path.name)
        return applied
    return _transaction(conn, body)


class SqliteStore(Store):
    """One SQLite file, shared by the processes of one host."""

    backend = "sqlite"
    # rowid: a new row gets the next one, and one transaction commits at a time, so a row is
    # never committed below one already seen. An upsert keeps its row's rowid.
    task_position, settled = "t.rowid", "1 = 1"

    def __init__(self, path: str, url: str | None = None) -> None:
        super().__init__()
        self.path, self.url = path, url or path
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="store-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="store-read")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self.opened: tuple[int, int] | None = None  # the file's identity when opened

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._wconn = await loop.run_in_executor(self._writer, connect, self.path)
        self.opened = file_id(self.path)
        applied = await loop.run_in_executor(self._writer, apply_migrations, self._wconn)
        if applied:
            log.info("store_migrated", backend=self.backend, applied=applied)
        self._rconn = await loop.run_in_executor(self._reader, connect, self.path)

    async def close(self) -> None:
        if self._flush_task is not None:
            await self._flush_task
        loop = asyncio.get_running_loop()
        for conn, pool in ((self._wconn, self._writer), (self._rconn, self._reader)):
            if conn is not None:
                await loop.run_in_executor(pool, conn.close)
            pool.shutdown(wait=True)

    def moved(self) -> str | None:
        try:
            now_id = file_id(self.path)
        except FileNotFoundError:
            return f"deleted: {self.path} is gone"
        return None if now_id == self.opened else (
            f"replaced: {self.path} is not the file this process opened")

    def _in_place(self) -> None:
        """Before each write transaction (a group commit of many rows, or one of
        write_together): one stat. A file deleted or replaced under a running process took
        its rows, unread for good (issue 25); now they wait, retried by their writers, until
        the file is back. A change between this stat and the commit (microseconds) is not
        seen."""
        problem = self.moved()
        if problem is not None:
            raise StoreMoved(f"{problem}: nothing is written until it is back")

    async def _commit(self, items: list[Write]) -> list[bool]:
        return await asyncio.get_running_loop().run_in_executor(
            self._writer, self._write_many, items)

    def _write_many(self, items: list[Write]) -> list[bool]:
        conn = self._wconn
        assert conn is not None, "store not opened"
        self._in_place()
        return _transaction(
            conn, lambda: [conn.execute(_SQL[i.op], i.params).rowcount > 0 for i in items])

    async def write_together(self, statements: Sequence[Statement], *,
                             guarded: bool = False) -> list[bool]:
        """On the one writer thread, which orders it with the group commits."""
        conn = self._wconn
        assert conn is not None, "store not opened"
        batch = list(statements)

        def body() -> list[bool]:
            self._in_place()
            out: list[bool] = []
            for sql, params in batch:
                if guarded and out and not out[0]:
                    break  # the condition failed: nothing was changed, the commit is a no-op
                out.append(conn.execute(sql, params).rowcount > 0)
            return out + [False] * (len(batch) - len(out))
        out = await asyncio.get_running_loop().run_in_executor(
            self._writer, lambda: _transaction(conn, body))
        self.transactions += 1
        return out

    # --- reads -------------------------------------------------------------------------------
    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._rconn
        assert conn is not None, "store not opened"
        return await asyncio.get_running_loop().run_in_executor(
            self._reader, lambda: _retry_locked(lambda: fn(conn)))

    async def get_task(self, task_id: str) -> dict[str, Any] | None:
        def q(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return dict(row) if row else None
        return await self._read(q)

    async def list_failed(self, tenant: str, limit: int) -> list[dict[str, Any]]:
        def q(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            cur = conn.execute(
                "SELECT * FROM tasks WHERE tenant = ? AND status = 'failed' "
                "ORDER BY completed_at DESC LIMIT ?", (tenant, limit))
            return [dict(r) for r in cur.fetchall()]
        return await self._read(q)

    async def get_idempotency_key(self, tenant: str, key: str) -> tuple[str, str] | None:
        def q(conn: sqlite3.Connection) -> tuple[str, str] | None:
            row = conn.execute(
                "SELECT task_id, body_hash FROM idempotency_keys WHERE tenant = ? AND key = ?",
                (tenant, key)).fetchone()
            return (row[0], row[1]) if row else None
        return await self._read(q)

    async def get_meta(self, key: str) -> str | None:
        def q(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return str(row[0]) if row else None
        return await self._read(q)

    async def count(self, table: str) -> int:
        name = check_table(table)
        return await self._read(lambda c: int(c.execute(f"SELECT COUNT(*) FROM {name}")
                                              .fetchone()[0]))

    async def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return await self._read(lambda c: [dict(r) for r in c.execute(sql, params)])

    async def ping(self) -> None:
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

"""The SQLite store (a schema Cloudflare D1 also accepts).

Writes go through one thread per process and are group-committed: every row that arrives while
a transaction runs joins the next one, so a batch of results costs one fsync, as the original
design wrote D1 once per batch. Several processes share the file: WAL, a busy timeout,
``BEGIN IMMEDIATE`` and a retry loop keep "database is locked" away from tasks.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from shared import logs
from shared.timeutil import now_ms

log = logs.get("sluice.store")
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
T = TypeVar("T")


@dataclass(slots=True)
class TaskRow:
    id: str
    tenant: str
    status: str
    model: str | None
    request: str
    content: str | None
    reasoning_content: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    attempts: int
    error: str | None
    batch_id: str | None
    processor: str | None
    fence: int
    created_at: int
    started_at: int | None
    completed_at: int | None


@dataclass(slots=True)
class BatchRow:
    id: str
    size: int
    reason: str
    processor: str | None
    created_at: int
    claimed_at: int | None
    completed_at: int | None


_COLUMNS = [f for f in TaskRow.__dataclass_fields__]
_UPSERT_TASK = (
    f"INSERT INTO tasks ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    "ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "id")
    + " WHERE excluded.fence > tasks.fence"
)
_INSERT_TASK_IF_ABSENT = (
    f"INSERT INTO tasks ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    "ON CONFLICT(id) DO NOTHING"
)
_UPSERT_BATCH = (
    "INSERT INTO batches (id, size, reason, processor, created_at, claimed_at, completed_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
    "processor = excluded.processor, "
    "claimed_at = COALESCE(batches.claimed_at, excluded.claimed_at), "
    "completed_at = COALESCE(excluded.completed_at, batches.completed_at)"
)


def connect(path: str) -> sqlite3.Connection:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


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


def _split_statements(sql: str) -> list[str]:
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def apply_migrations(conn: sqlite3.Connection, folder: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending ``NNNN_name.sql`` files and record them the way wrangler does."""
    def body() -> list[str]:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS d1_migrations (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "name TEXT UNIQUE, applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)")
        done = {r[0] for r in conn.execute("SELECT name FROM d1_migrations")}
        applied = []
        for path in sorted(folder.glob("[0-9][0-9][0-9][0-9]_*.sql")):
            if path.name in done:
                continue
            for statement in _split_statements(path.read_text()):
                conn.execute(statement)
            conn.execute("INSERT INTO d1_migrations (name) VALUES (?)", (path.name,))
            applied.append(path.name)
        return applied
    return _transaction(conn, body)


@dataclass(slots=True)
class _Write:
    sql: str
    params: tuple[Any, ...]
    future: asyncio.Future[bool]


class Store:
    """Async face of the SQLite file for one process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="store-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="store-read")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._pending: list[_Write] = []
        self._flushing = False
        self._flush_task: asyncio.Task[None] | None = None
        self.transactions = 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._wconn = await loop.run_in_executor(self._writer, connect, self.path)
        applied = await loop.run_in_executor(self._writer, apply_migrations, self._wconn)
        if applied:
            log.info("store_migrated", applied=applied)
        self._rconn = await loop.run_in_executor(self._reader, connect, self.path)

    async def close(self) -> None:
        if self._flush_task is not None:
            await self._flush_task
        loop = asyncio.get_running_loop()
        for conn, pool in ((self._wconn, self._writer), (self._rconn, self._reader)):
            if conn is not None:
                await loop.run_in_executor(pool, conn.close)
            pool.shutdown(wait=True)

    # --- writes ------------------------------------------------------------------------------
    async def save_task(self, row: TaskRow) -> bool:
        """Upsert a final row; False when a row with an equal or higher fence is there."""
        return await self._write(_UPSERT_TASK, tuple(asdict(row).values()))

    async def save_task_if_absent(self, row: TaskRow) -> bool:
        return await self._write(_INSERT_TASK_IF_ABSENT, tuple(asdict(row).values()))

    async def save_batch(self, row: BatchRow) -> bool:
        return await self._write(_UPSERT_BATCH, tuple(asdict(row).values()))

    async def save_idempotency_key(self, tenant: str, key: str, task_id: str,
                                   body_hash: str) -> bool:
        return await self._write(
            "INSERT INTO idempotency_keys (tenant, key, task_id, body_hash, created_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(tenant, key) DO NOTHING",
            (tenant, key, task_id, body_hash, now_ms()))

    async def _write(self, sql: str, params: tuple[Any, ...]) -> bool:
        [ok] = await self.write_together([(sql, params)])
        return ok

    async def write_together(self, statements: Sequence[tuple[str, tuple[Any, ...]]]
                             ) -> list[bool]:
        """Run statements in one transaction: all of them or none. They are queued without
        an await in between, so one flush takes them all (it takes the whole pending list)."""
        loop = asyncio.get_running_loop()
        items = [_Write(sql, params, loop.create_future()) for sql, params in statements]
        self._pending.extend(items)
        if not self._flushing:
            self._flushing = True
            self._flush_task = loop.create_task(self._flush_all())
        return [await item.future for item in items]

    async def _flush_all(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                items, self._pending = self._pending, []
                try:
                    results = await loop.run_in_executor(self._writer, self._write_many, items)
                except Exception as exc:  # handed to every waiting writer
                    for item in items:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                for item, ok in zip(items, results, strict=True):
                    if not item.future.done():
                        item.future.set_result(ok)
        finally:
            self._flushing = False

    def _write_many(self, items: Iterable[_Write]) -> list[bool]:
        conn = self._wconn
        assert conn is not None, "store not opened"
        batch = list(items)

        def body() -> list[bool]:
            return [conn.execute(i.sql, i.params).rowcount > 0 for i in batch]

        out = _transaction(conn, body)
        self.transactions += 1
        return out

    # --- reads -------------------------------------------------------------------------------
    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the read connection (for the modules that own their tables)."""
        return await self._read(fn)

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
        """The tenant's dead letters: tasks that failed for good, newest first."""
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

    async def count(self, table: str) -> int:
        if table not in {"tasks", "batches", "idempotency_keys"}:
            raise ValueError(table)
        return await self._read(lambda c: int(c.execute(f"SELECT COUNT(*) FROM {table}")
                                              .fetchone()[0]))

    async def ping(self) -> None:
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

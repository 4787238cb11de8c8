"""The networked store: PostgreSQL through asyncpg, with a bounded pool.

The same guarantees as the SQLite store, by the same statements in PostgreSQL's dialect: the
fenced upsert is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` (the row lock makes the
highest fence win under any concurrency), and a group of writes is one transaction.

Faults: a connection that cannot be made, or is cut mid-transaction (a restart, a failover of
a managed primary), fails the whole step, which PostgreSQL rolled back; the step is retried as
a whole with capped backoff for ``patience_s`` (for ever when None: a processor keeps a
finished result until it is written), then :class:`StoreUnavailable` is raised.
"""

from __future__ import annotations

import asyncio
import functools
import zlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from shared import logs
from shared.config import mask_url
from shared.store import (
    FENCED_TASK_CONFLICT,
    INSERT_IDEMPOTENCY,
    INSERT_TASK,
    MIGRATIONS_DIR,
    TASK_COLUMNS,
    UPSERT_TASK,
    Statement,
    Store,
    StoreUnavailable,
    TaskRow,
    Write,
    check_table,
    write_statements,
)
from shared.store_sqlite import migration_files

log = logs.get("sluice.store")
T = TypeVar("T")
PG_MIGRATIONS_DIR = MIGRATIONS_DIR / "postgres"
# pg_advisory_lock key for migrations: every process of every deployment on this database
# agrees on it, so ten processors starting at once migrate once.
MIGRATION_LOCK = zlib.crc32(b"sluice.migrations")
RETRY_FIRST_S, RETRY_CAP_S = 0.05, 2.0
CONNECT_TIMEOUT_S = 5.0
CLOSE_WAIT_S = 10.0  # how long close() lets a pending write retry before giving it up
# Errors after which the step may be run again: no connection, a connection cut, a server
# shutting down or starting up, a serialization failure or deadlock (rolled back). A pooled
# connection whose server was killed can also fail with asyncpg's own interface errors
# (MagicStack/asyncpg#784): it is thrown away and the step runs on a fresh one.
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.TooManyConnectionsError, asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


_SQL = write_statements(lambda n: f"${n}")
# Many task rows in one statement, one array per column: a group of results costs one round
# trip instead of one per row (RETURNING names the rows the fence let through).
_TASK_TYPES = ["bigint" if "int" in str(TaskRow.__annotations__[c]) else "text"
               for c in TASK_COLUMNS]
_UPSERT_TASKS = (
    f"INSERT INTO tasks ({', '.join(TASK_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"${i}::{t}[]" for i, t in enumerate(_TASK_TYPES, 1)) + ") "
    + FENCED_TASK_CONFLICT + " RETURNING id")
# Named, not ``*``: the table has a column of PostgreSQL's own (txid, migration 0004).
_TASK_FIELDS = ", ".join(TASK_COLUMNS)
_FENCE_OF = TASK_COLUMNS.index("fence")
_PROCESSOR_OF = TASK_COLUMNS.index("processor")


async def apply_migrations(conn: asyncpg.Connection,
                           folder: Path = PG_MIGRATIONS_DIR) -> list[str]:
    """Apply pending files under an advisory lock, recorded as wrangler records D1's."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS d1_migrations (id SERIAL PRIMARY KEY, "
            "name TEXT UNIQUE, applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)")
        done = {r["name"] for r in await conn.fetch("SELECT name FROM d1_migrations")}
        applied = []
        for path in migration_files(folder):
            if path.name in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO d1_migrations (name) VALUES ($1)", path.name)
            applied.append(path.name)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


def _text_safe(params: tuple[Any, ...]) -> tuple[Any, ...]:
    """PostgreSQL text cannot hold NUL (SQLite's can): it becomes U+FFFD, so a model name or
    an id with one is stored (or looked up) instead of failing the write."""
    if not any(isinstance(p, str) and "\x00" in p for p in params):
        return params
    return tuple(p.replace("\x00", "\ufffd") if isinstance(p, str) else p for p in params)


@functools.cache
def numbered(sql: str) -> str:
    """The SQL of the modules that own their tables, in PostgreSQL's placeholders: ``?``
    becomes ``$1``, ``$2``... outside string literals. Their texts are a small, fixed set, so
    each is worked out once."""
    parts = sql.split("'")
    n = 0
    for i in range(0, len(parts), 2):  # outside quotes: the even parts
        pieces = parts[i].split("?")
        for j in range(1, len(pieces)):
            n += 1
            pieces[j] = f"${n}{pieces[j]}"
        parts[i] = "".join(pieces)
    return "'".join(parts)


def _changed(status: str) -> bool:
    """Whether a command tag such as ``INSERT 0 1`` says a row was written."""
    return status.rsplit(" ", 1)[-1] != "0"


class PostgresStore(Store):
    backend = "postgresql"
    # tasks.txid: the transaction that inserted the row (migration 0004). Transactions commit in
    # any order, but none with an id below the oldest one still running ever commits again:
    # places under that horizon are final (the transactional-outbox reading of MVCC snapshots).
    task_position = "t.txid"
    settled = "t.txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint"

    def __init__(self, url: str, *, pool_size: int = 10, patience_s: float | None = None) -> None:
        super().__init__()
        self.url, self.pool_size, self.patience_s = url, pool_size, patience_s
        self._pool: asyncpg.Pool | None = None
        self.failures = 0  # transient errors met so far (each one retried or reported)
        self.close_wait_s = CLOSE_WAIT_S

    async def open(self) -> None:
        timeout = CONNECT_TIMEOUT_S if self.patience_s is None else \
            max(0.5, min(CONNECT_TIMEOUT_S, self.patience_s))
        self._pool = asyncpg.create_pool(
            self.url, min_size=0, max_size=self.pool_size, timeout=timeout,
            command_timeout=60, max_inactive_connection_lifetime=60)
        await self._pool
        # At start-up, wait for the database as the services wait for Redis (a minute at
        # least: compose starts everything together).
        patience = None if self.patience_s is None else max(60.0, self.patience_s)
        applied = await self._retrying("migrate", lambda c, _n: apply_migrations(c), patience)
        if applied:
            log.info("store_migrated", backend=self.backend, applied=applied)

    async def close(self) -> None:
        task = self._flush_task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), self.close_wait_s)
            except TimeoutError:
                task.cancel()
                lost = self._pending
                self._pending = []
                log.warning("store_close_gave_up", pending=len(lost))
                for item in lost:
                    if not item.future.done():
                        item.future.set_exception(StoreUnavailable("store closed"))
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 5)
            except TimeoutError:
                self._pool.terminate()

    # --- the retry loop ----------------------------------------------------------------------
    async def _retrying(self, what: str,
                        step: Callable[[asyncpg.Connection, int], Awaitable[T]],
                        patience_s: float | None = -1.0) -> T:
        """Run ``step`` on a pooled connection, again from the start after a transient error
        (the argument is the number of failed tries before this one)."""
        pool = self._pool
        assert pool is not None, "store not opened"
        patience = self.patience_s if patience_s == -1.0 else patience_s
        loop = asyncio.get_running_loop()
        deadline = None if patience is None else loop.time() + patience
        delay, failures = RETRY_FIRST_S, 0
        while True:
            try:
                async with pool.acquire() as conn:
                    try:
                        return await step(conn, failures)
                    except TRANSIENT:
                        conn.terminate()  # never handed out again: the pool opens another
                        raise
            except TRANSIENT as exc:
                failures += 1
                self.failures += 1
                if deadline is not None and loop.time() + delay > deadline:
                    raise StoreUnavailable(
                        f"PostgreSQL at {mask_url(self.url)} is unreachable: {exc!r}") from exc
                if failures == 1 or failures % 10 == 0:
                    log.warning("store_retry", what=what, failures=failures,
                                error=repr(exc)[:200], delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(RETRY_CAP_S, delay * 2)

    # --- writes ------------------------------------------------------------------------------
    async def _commit(self, items: list[Write]) -> list[bool]:
        async def step(conn: asyncpg.Connection, failures: int) -> list[bool]:
            async with conn.transaction():
                out = await _apply(conn, items)
                if failures:
                    # A cut during COMMIT leaves its outcome unknown: a write refused now may
                    # be our own from the try before, which must count as done.
                    for n, item in enumerate(items):
                        if not out[n]:
                            out[n] = await _ours_already(conn, item)
            return out
        return await self._retrying("write", step)

    async def write_together(self, statements: Sequence[Statement], *,
                             guarded: bool = False) -> list[bool]:
        """Retried as a whole, like a group commit. A retry after a cut during COMMIT may find
        its own writes there: each statement of these modules is written so that running it
        again changes nothing (or reports its own row, see ``WebhookStore.create_secret``)."""
        batch = [(numbered(sql), _text_safe(params)) for sql, params in statements]

        async def step(conn: asyncpg.Connection, _failures: int) -> list[bool]:
            out: list[bool] = []
            async with conn.transaction():
                for sql, params in batch:
                    if guarded and out and not out[0]:
                        break  # the condition failed: nothing was changed
                    out.append(_changed(await conn.execute(sql, *params)))
            return out + [False] * (len(batch) - len(out))
        out = await self._retrying("write", step)
        self.transactions += 1
        return out

    # --- reads -------------------------------------------------------------------------------
    async def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        rows = await self._retrying("read", lambda c, _n: c.fetch(
            numbered(sql), *_text_safe(params)))
        return [dict(r) for r in rows]

    async def get_task(self, task_id: str) -> dict[str, Any] | None:
        row = await self._retrying("read", lambda c, _n: c.fetchrow(
            f"SELECT {_TASK_FIELDS} FROM tasks WHERE id = $1", *_text_safe((task_id,))))
        return dict(row) if row else None

    async def list_failed(self, tenant: str, limit: int) -> list[dict[str, Any]]:
        rows = await self._retrying("read", lambda c, _n: c.fetch(
            f"SELECT {_TASK_FIELDS} FROM tasks WHERE tenant = $1 AND status = 'failed' "
            "ORDER BY completed_at DESC LIMIT $2", *_text_safe((tenant, limit))))
        return [dict(r) for r in rows]

    async def get_idempotency_key(self, tenant: str, key: str) -> tuple[str, str] | None:
        row = await self._retrying("read", lambda c, _n: c.fetchrow(
            "SELECT task_id, body_hash FROM idempotency_keys WHERE tenant = $1 AND key = $2",
            *_text_safe((tenant, key))))
        return (row[0], row[1]) if row else None

    async def get_meta(self, key: str) -> str | None:
        value = await self._retrying("read", lambda c, _n: c.fetchval(
            "SELECT value FROM meta WHERE key = $1", *_text_safe((key,))))
        return None if value is None else str(value)

    async def count(self, table: str) -> int:
        name = check_table(table)
        return int(await self._retrying(
            "read", lambda c, _n: c.fetchval(f"SELECT COUNT(*) FROM {name}")))

    async def ping(self) -> None:
        await self._retrying("ping", lambda c, _n: c.fetchval("SELECT 1"))


async def _apply(conn: asyncpg.Connection, items: list[Write]) -> list[bool]:
    """Every write of a group, in one transaction: the task upserts in one statement when
    there are several for distinct ids (nothing else in the group then touches their rows)."""
    upserts = [n for n, i in enumerate(items) if i.op == UPSERT_TASK]
    ids = {items[n].params[0] for n in upserts}
    other_task_ids = {i.params[0] for i in items if i.op == INSERT_TASK}
    if len(upserts) < 2 or len(ids) < len(upserts) or ids & other_task_ids:
        return [_changed(await conn.execute(_SQL[i.op], *_text_safe(i.params)))
                for i in items]
    out = [False] * len(items)
    for n, item in enumerate(items):
        if item.op != UPSERT_TASK:
            out[n] = _changed(await conn.execute(_SQL[item.op], *_text_safe(item.params)))
    rows = [_text_safe(items[n].params) for n in upserts]
    written = {r[0] for r in await conn.fetch(_UPSERT_TASKS, *map(list, zip(*rows, strict=True)))}
    for n in upserts:
        out[n] = _text_safe(items[n].params[:1])[0] in written
    return out


async def _ours_already(conn: asyncpg.Connection, item: Write) -> bool:
    """Whether the row a refused write wanted is there already, written by the same hand."""
    if item.op in (UPSERT_TASK, INSERT_TASK):
        row = await conn.fetchrow("SELECT fence, processor FROM tasks WHERE id = $1",
                                  *_text_safe(item.params[:1]))
        return row is not None and (row[0], row[1]) == _text_safe(
            (item.params[_FENCE_OF], item.params[_PROCESSOR_OF]))
    if item.op == INSERT_IDEMPOTENCY:
        task_id = await conn.fetchval(
            "SELECT task_id FROM idempotency_keys WHERE tenant = $1 AND key = $2",
            *_text_safe(item.params[:2]))
        return bool(task_id == _text_safe(item.params[2:3])[0])
    return False

"""The store: one interface, two backends beside it.

``STORE_URL`` picks the backend: a file path or ``sqlite:///path`` is the embedded SQLite store
(``shared/store_sqlite.py``, a schema Cloudflare D1 also accepts), ``postgresql://...`` the
networked one (``shared/store_postgres.py``). Callers only see :class:`Store`.

Writes are group-committed in both: every row that arrives while a transaction runs joins the
next one, so a batch of results costs one commit, as the original design wrote D1 once per
batch. A backend only says how one group is committed (:meth:`Store._commit`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

from shared import metrics
from shared.timeutil import now_ms

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
TABLES = ("tasks", "batches", "idempotency_keys")


class StoreUnavailable(Exception):
    """The networked store could not be reached within the caller's patience."""


class StoreMoved(StoreUnavailable):
    """The SQLite file at STORE_PATH is no longer the one this process opened (deleted or
    replaced): nothing is written until it is back. Its connections would write on into the
    file they opened, where no one would read the rows again."""


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
    provider: str | None = None  # who answered (PROVIDERS_FILE's name; 'default' without)
    provider_model: str | None = None  # the model it was asked for
    tries: str | None = None  # every provider call, a JSON array (runner.TaskRoutes.tried)
    # JSON: what the result holds beyond the columns above (tool calls, logprobs, refusal,
    # system fingerprint, every choice when n > 1, usage details): tasks.stored_extras.
    result_extra: str | None = None


@dataclass(slots=True)
class BatchRow:
    id: str
    size: int
    reason: str
    processor: str | None
    created_at: int
    claimed_at: int | None
    completed_at: int | None


TASK_COLUMNS = list(TaskRow.__dataclass_fields__)
BATCH_COLUMNS = list(BatchRow.__dataclass_fields__)
# A row's values in column order. Not dataclasses.asdict: it deep-copies every field, a
# measurable cost on the one write every task makes.
_task_values: Callable[[TaskRow], tuple[Any, ...]] = attrgetter(*TASK_COLUMNS)
_batch_values: Callable[[BatchRow], tuple[Any, ...]] = attrgetter(*BATCH_COLUMNS)
IDEMPOTENCY_COLUMNS = ["tenant", "key", "task_id", "body_hash", "created_at"]

# The write operations every backend turns into one statement each (see its _SQL table).
UPSERT_TASK = "upsert_task"        # fenced: replaces a row only for a strictly higher fence
INSERT_TASK = "insert_task"        # only when no row exists
UPSERT_BATCH = "upsert_batch"      # claimed_at kept from the first write, completed_at from any
INSERT_IDEMPOTENCY = "insert_idem"  # the first key wins
PUT_META = "put_meta"              # a fact about the store, replaced
INSERT_META = "insert_meta"        # a fact about the store, only when it has none


# What makes a task upsert fenced: a row is replaced only by a strictly higher fence.
FENCED_TASK_CONFLICT = (
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in TASK_COLUMNS if c != "id")
    + " WHERE excluded.fence > tasks.fence")


def write_statements(param: Callable[[int], str]) -> dict[str, str]:
    """The write statements, in the SQL both backends speak; ``param(n)`` is a backend's n-th
    placeholder (``?`` or ``$n``). One text, so the two cannot drift apart."""
    def insert(table: str, columns: list[str]) -> str:
        values = ", ".join(param(i) for i in range(1, len(columns) + 1))
        return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) "
    return {
        UPSERT_TASK: insert("tasks", TASK_COLUMNS) + FENCED_TASK_CONFLICT,
        INSERT_TASK: insert("tasks", TASK_COLUMNS) + "ON CONFLICT (id) DO NOTHING",
        UPSERT_BATCH: insert("batches", BATCH_COLUMNS) + "ON CONFLICT (id) DO UPDATE SET "
        "processor = excluded.processor, "
        "claimed_at = COALESCE(batches.claimed_at, excluded.claimed_at), "
        "completed_at = COALESCE(excluded.completed_at, batches.completed_at)",
        INSERT_IDEMPOTENCY: insert("idempotency_keys", IDEMPOTENCY_COLUMNS)
        + "ON CONFLICT (tenant, key) DO NOTHING",
        PUT_META: insert("meta", ["key", "value"])
        + "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        INSERT_META: insert("meta", ["key", "value"]) + "ON CONFLICT (key) DO NOTHING",
    }


# A deleted task's row: a tombstone under the highest fence there is, so that no write of a
# holder still finishing it (the fenced upsert) and no first write of a row (insert if absent)
# brings it back; its request and answer are erased, its id, tenant and counts kept.
TOMBSTONE_FENCE = 2**63 - 1
_TOMBSTONE = (
    "INSERT INTO tasks (id, tenant, status, request, attempts, fence, created_at, completed_at) "
    "VALUES (?, ?, ?, '{}', 0, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET status = excluded.status, "
    "request = excluded.request, content = NULL, reasoning_content = NULL, "
    "finish_reason = NULL, error = NULL, fence = excluded.fence "
    "WHERE tasks.tenant = excluded.tenant")


# A statement of the modules that own their tables (files, batches, webhooks): SQL written once,
# in what both backends speak, with ``?`` placeholders (the PostgreSQL store numbers them), and
# its values.
Statement = tuple[str, tuple[Any, ...]]


# SQLite's own names for "the file is not a usable database": nothing written to it will stick.
_BROKEN = ("SQLITE_CORRUPT", "SQLITE_NOTADB")  # with their extended codes (_CORRUPT_INDEX)


def store_broken(exc: BaseException) -> bool:
    """The store is corrupt or not a database: a service cannot go on with it."""
    name = getattr(exc, "sqlite_errorname", None) or ""
    return isinstance(exc, sqlite3.DatabaseError) and name.startswith(_BROKEN)


def store_unavailable(exc: BaseException) -> bool:
    """The store cannot take writes right now (disk full, an I/O error, read-only, locked too
    long, a networked store out of reach), but may again: worth waiting for, unlike a corrupt
    file or a bad value."""
    if isinstance(exc, StoreUnavailable):
        return True
    return isinstance(exc, sqlite3.OperationalError) and not store_broken(exc)


@dataclass(slots=True)
class Write:
    op: str
    params: tuple[Any, ...]
    future: asyncio.Future[bool]


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite ``STORE_URL`` (a path or ``sqlite:///path``); None for others."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    if scheme.lower() != "sqlite":
        return None
    return rest[1:] if rest.startswith("/") else rest  # sqlite:///x -> x, sqlite:////x -> /x


def make_store(url: str, *, pool_size: int = 10, patience_s: float | None = None) -> Store:
    """The store ``url`` names, not yet opened.

    ``patience_s``: how long a call keeps retrying a networked store that cannot be reached
    before raising :class:`StoreUnavailable`; None retries for ever (a processor holding a
    finished result must not drop it). SQLite, a local file, ignores it.
    """
    path = sqlite_path(url)
    if path is not None:
        from shared.store_sqlite import SqliteStore
        return SqliteStore(path, url)
    from shared.store_postgres import PostgresStore
    return PostgresStore(url, pool_size=pool_size, patience_s=patience_s)


class Store(ABC):
    """Async face of the store for one process."""

    backend: str
    url: str  # what make_store was given (STORE_URL)
    # A task row's place in commit order (an expression on ``tasks t``), and the condition under
    # which a place is settled: no row can still be committed at or below it. For readers that
    # follow the tasks table as a log, as the webhook scanner does
    # (services/edge/webhooks/store.py).
    task_position: str
    settled: str

    def __init__(self) -> None:
        self._pending: list[Write] = []
        self._flushing = False
        self._flush_task: asyncio.Task[None] | None = None
        self.transactions = 0

    @abstractmethod
    async def open(self) -> None:
        """Connect, and apply pending migrations."""

    @abstractmethod
    async def close(self) -> None:
        """Finish pending writes, then disconnect."""

    def moved(self) -> str | None:
        """What happened to the store's file since it was opened (``deleted: ...``,
        ``replaced: ...``), or None while it is in place. A networked store has no file."""
        return None

    # --- writes ------------------------------------------------------------------------------
    async def save_task(self, row: TaskRow) -> bool:
        """Upsert a final row; False when a row with an equal or higher fence is there."""
        return await self._write(UPSERT_TASK, _task_values(row))

    async def save_task_if_absent(self, row: TaskRow) -> bool:
        return await self._write(INSERT_TASK, _task_values(row))

    async def save_batch(self, row: BatchRow) -> bool:
        return await self._write(UPSERT_BATCH, _batch_values(row))

    async def save_idempotency_key(self, tenant: str, key: str, task_id: str,
                                   body_hash: str) -> bool:
        return await self._write(INSERT_IDEMPOTENCY,
                                 (tenant, key, task_id, body_hash, now_ms()))

    async def put_meta(self, key: str, value: str, *, replace: bool = True) -> bool:
        """Set one fact about the store (``replace=False``: only when it has none)."""
        return await self._write(PUT_META if replace else INSERT_META, (key, value))

    async def forget_task(self, task_id: str, tenant: str, status: str, now: int) -> bool:
        """Delete ``tenant``'s task for good: its row becomes a tombstone (``status``, which
        every reader takes as no row) and its Idempotency-Keys go. False: another tenant's."""
        [kept, _keys] = await self.write_together([
            (_TOMBSTONE, (task_id, tenant, status, TOMBSTONE_FENCE, now, now)),
            ("DELETE FROM idempotency_keys WHERE tenant = ? AND task_id = ?",
             (tenant, task_id))], guarded=True)
        return kept

    async def _write(self, op: str, params: tuple[Any, ...]) -> bool:
        loop = asyncio.get_running_loop()
        item = Write(op, params, loop.create_future())
        self._pending.append(item)
        if not self._flushing:
            self._flushing = True
            self._flush_task = loop.create_task(self._flush_all())
        return await item.future

    async def _flush_all(self) -> None:
        try:
            while self._pending:
                items, self._pending = self._pending, []
                try:
                    results = await self._commit(items)
                except asyncio.CancelledError:  # close() gave up on the database
                    for item in items:
                        _settle(item, StoreUnavailable("the store was closed"))
                    raise
                except StoreUnavailable as exc:  # handed to every waiting writer
                    metrics.store_errors.inc()
                    for item in items:
                        _settle(item, exc)
                    continue
                except Exception:
                    # One bad row (a constraint, a value the database refuses) must not fail
                    # the rows that shared its transaction: each on its own, then.
                    for item in items:
                        try:
                            [ok] = await self._commit([item])
                        except Exception as exc:
                            metrics.store_errors.inc()
                            _settle(item, exc)
                        else:
                            self.transactions += 1
                            _settle(item, ok)
                    continue
                self.transactions += 1
                for item, ok in zip(items, results, strict=True):
                    _settle(item, ok)
        finally:
            self._flushing = False

    @abstractmethod
    async def _commit(self, items: list[Write]) -> list[bool]:
        """Apply every write in one transaction; whether each changed a row."""

    @abstractmethod
    async def write_together(self, statements: Sequence[Statement], *,
                             guarded: bool = False) -> list[bool]:
        """Run ``statements`` in one transaction of their own, all of them or none (for the
        modules that own their tables); whether each changed a row. ``guarded``: the first
        statement is a condition for the rest, which run only when it changed a row (a batch's
        files ride on the change of its status, and must not outlive a change that missed)."""

    # --- reads -------------------------------------------------------------------------------
    @abstractmethod
    async def get_task(self, task_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    async def list_failed(self, tenant: str, limit: int) -> list[dict[str, Any]]:
        """The tenant's dead letters: tasks that failed for good, newest first."""

    @abstractmethod
    async def get_idempotency_key(self, tenant: str, key: str) -> tuple[str, str] | None: ...

    @abstractmethod
    async def get_meta(self, key: str) -> str | None: ...

    @abstractmethod
    async def count(self, table: str) -> int: ...

    @abstractmethod
    async def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        """The rows of one query in the SQL both backends speak (``?`` placeholders)."""

    @abstractmethod
    async def ping(self) -> None: ...


def _settle(item: Write, outcome: bool | Exception) -> None:
    if item.future.done():
        return
    if isinstance(outcome, Exception):
        item.future.set_exception(outcome)
    else:
        item.future.set_result(outcome)


def check_table(table: str) -> str:
    if table not in TABLES:
        raise ValueError(table)
    return table

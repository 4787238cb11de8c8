"""Webhooks' persistence: secrets, endpoints, per-task URLs and the delivery outbox
(migration 0003). Kept apart from the tasks' store like :mod:`shared.batch_store`."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import orjson

from shared.batch_store import Statement
from shared.store_sqlite import SqliteStore

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
TASKS_CURSOR = "tasks"


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    tenant: str
    url: str
    events: list[str]
    created_at: int


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    tenant: str
    endpoint_id: str
    url: str
    event_type: str
    payload: str
    attempts: int
    created_at: int


@dataclass(frozen=True, slots=True)
class FinishedTask:
    position: int  # the row's place in the tasks table: the scanner's cursor
    id: str
    tenant: str
    status: str
    url: str | None  # the task's own webhook_url


def _endpoint(r: sqlite3.Row) -> Endpoint:
    return Endpoint(r["id"], r["tenant"], r["url"], orjson.loads(r["events"]), r["created_at"])


def delivery_statement(d: Delivery, guard: tuple[str, str] | None = None) -> Statement:
    """Queue one delivery (``INSERT OR IGNORE``: its id is derived from the event and the
    target, so queueing it again changes nothing). With ``guard`` (batch id, status) it is
    only queued while that batch has that status, as the batch's files are."""
    where, extra = "", tuple[str, ...]()
    if guard is not None:
        where = " WHERE EXISTS (SELECT 1 FROM openai_batches WHERE id = ? AND status = ?)"
        extra = guard
    return ("INSERT OR IGNORE INTO webhook_deliveries (id, tenant, endpoint_id, url, event_type, "
            "payload, state, attempts, next_at, created_at) SELECT ?, ?, ?, ?, ?, ?, ?, 0, ?, ?"
            + where, (d.id, d.tenant, d.endpoint_id, d.url, d.event_type, d.payload, PENDING,
                      d.created_at, d.created_at, *extra))


class WebhookStore:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    # --- secrets -----------------------------------------------------------------------------
    async def create_secret(self, tenant: str, secret: str) -> bool:
        """Give the tenant ``secret`` unless it has one; True when this call gave it."""
        [made] = await self.store.write_together([(
            "INSERT OR IGNORE INTO webhook_secrets (tenant, secret) VALUES (?, ?)",
            (tenant, secret))])
        return made

    async def rotate_secret(self, tenant: str, secret: str, previous_until: int) -> None:
        await self.store.write_together([(
            "INSERT INTO webhook_secrets (tenant, secret) VALUES (?, ?) ON CONFLICT(tenant) DO "
            "UPDATE SET previous = webhook_secrets.secret, previous_until = ?, "
            "secret = excluded.secret", (tenant, secret, previous_until))])

    async def signing_secrets(self, tenant: str, now_s: int) -> list[str]:
        def q(c: sqlite3.Connection) -> list[str]:
            r = c.execute("SELECT secret, previous, previous_until FROM webhook_secrets "
                          "WHERE tenant = ?", (tenant,)).fetchone()
            if r is None:
                return []
            keep_old = r["previous"] and (r["previous_until"] or 0) > now_s
            return [r["secret"], r["previous"]] if keep_old else [r["secret"]]
        return await self.store.read(q)

    # --- endpoints ---------------------------------------------------------------------------
    async def add_endpoint(self, e: Endpoint) -> None:
        await self.store.write_together([(
            "INSERT INTO webhook_endpoints (id, tenant, url, events, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (e.id, e.tenant, e.url, orjson.dumps(e.events).decode(), e.created_at))])

    async def endpoints(self, tenant: str) -> list[Endpoint]:
        def q(c: sqlite3.Connection) -> list[Endpoint]:
            return [_endpoint(r) for r in c.execute(
                "SELECT * FROM webhook_endpoints WHERE tenant = ? ORDER BY created_at, id",
                (tenant,))]
        return await self.store.read(q)

    async def delete_endpoint(self, tenant: str, endpoint_id: str) -> bool:
        [gone] = await self.store.write_together([(
            "DELETE FROM webhook_endpoints WHERE id = ? AND tenant = ?", (endpoint_id, tenant))])
        return gone

    async def save_task_url(self, task_id: str, tenant: str, url: str) -> None:
        await self.store.write_together([(
            "INSERT OR IGNORE INTO task_webhooks (task_id, tenant, url) VALUES (?, ?, ?)",
            (task_id, tenant, url))])

    # --- the scanner -------------------------------------------------------------------------
    async def cursor(self) -> int:
        """Where the scanner stopped; on the very first call, the end of the tasks table (tasks
        finished before webhooks existed have no events)."""
        def q(c: sqlite3.Connection) -> int | None:
            r = c.execute("SELECT position FROM webhook_cursor WHERE name = ?",
                          (TASKS_CURSOR,)).fetchone()
            return None if r is None else int(r[0])
        position = await self.store.read(q)
        if position is None:
            position = await self.store.read(
                lambda c: int(c.execute("SELECT COALESCE(MAX(rowid), 0) FROM tasks")
                              .fetchone()[0]))
            await self.store.write_together([cursor_statement(position)])
        return position

    async def finished_since(self, position: int, limit: int) -> list[FinishedTask]:
        """Task rows after ``position`` in the order they were written (SQLite gives a new row
        the next rowid and writes one transaction at a time, so a row below the cursor is
        never committed late). Batch lines are left out: their batch has events of its own."""
        def q(c: sqlite3.Connection) -> list[FinishedTask]:
            return [FinishedTask(r[0], r[1], r[2], r[3], r[4]) for r in c.execute(
                "SELECT t.rowid, t.id, t.tenant, t.status, w.url FROM tasks t "
                "LEFT JOIN task_webhooks w ON w.task_id = t.id WHERE t.rowid > ? "
                "AND NOT EXISTS (SELECT 1 FROM batch_lines l WHERE l.task_id = t.id) "
                "ORDER BY t.rowid LIMIT ?", (position, limit))]
        return await self.store.read(q)

    async def tenants_with_endpoints(self) -> dict[str, list[Endpoint]]:
        def q(c: sqlite3.Connection) -> dict[str, list[Endpoint]]:
            out: dict[str, list[Endpoint]] = {}
            for r in c.execute("SELECT * FROM webhook_endpoints"):
                e = _endpoint(r)
                out.setdefault(e.tenant, []).append(e)
            return out
        return await self.store.read(q)

    async def enqueue(self, statements: list[Statement]) -> None:
        if statements:
            await self.store.write_together(statements)

    # --- deliveries --------------------------------------------------------------------------
    async def due(self, now_ms: int, limit: int) -> list[Delivery]:
        def q(c: sqlite3.Connection) -> list[Delivery]:
            return [Delivery(r["id"], r["tenant"], r["endpoint_id"], r["url"], r["event_type"],
                             r["payload"], r["attempts"], r["created_at"]) for r in c.execute(
                "SELECT * FROM webhook_deliveries WHERE state = ? AND next_at <= ? "
                "ORDER BY next_at LIMIT ?", (PENDING, now_ms, limit))]
        return await self.store.read(q)

    async def record_attempt(self, d: Delivery, at: int, status: int | None,
                             error: str | None, state: str, next_at: int) -> None:
        n = d.attempts + 1
        await self.store.write_together([
            ("INSERT OR IGNORE INTO webhook_attempts (delivery_id, attempt, at, status, error) "
             "VALUES (?, ?, ?, ?, ?)", (d.id, n, at, status, error)),
            ("UPDATE webhook_deliveries SET attempts = ?, state = ?, next_at = ?, last_at = ?, "
             "last_status = ?, last_error = ? WHERE id = ? AND attempts = ?",
             (n, state, next_at, at, status, error, d.id, d.attempts))])

    async def deliveries(self, tenant: str, endpoint_id: str, limit: int
                         ) -> list[dict[str, Any]]:
        def q(c: sqlite3.Connection) -> list[dict[str, Any]]:
            out = []
            for r in c.execute(
                    "SELECT id, event_type, state, attempts, created_at, next_at, payload "
                    "FROM webhook_deliveries WHERE tenant = ? AND endpoint_id = ? "
                    "ORDER BY created_at DESC LIMIT ?", (tenant, endpoint_id, limit)):
                item = dict(r)
                item["payload"] = orjson.loads(item["payload"])
                item["attempt_log"] = [dict(a) for a in c.execute(
                    "SELECT attempt, at, status, error FROM webhook_attempts "
                    "WHERE delivery_id = ? ORDER BY attempt", (r["id"],))]
                out.append(item)
            return out
        return await self.store.read(q)


def cursor_statement(position: int) -> Statement:
    return ("INSERT INTO webhook_cursor (name, position) VALUES (?, ?) ON CONFLICT(name) DO "
            "UPDATE SET position = MAX(webhook_cursor.position, excluded.position)",
            (TASKS_CURSOR, position))

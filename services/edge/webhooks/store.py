"""Webhooks' persistence: secrets, endpoints, per-task URLs and the delivery outbox
(migration 0003). Kept apart from the tasks' store like
:mod:`services.edge.openai.batch.store`, and like it written once for both backends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from shared.store import Statement, Store

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
TASKS_CURSOR = "tasks"
SCAN_IDS = 100  # task ids per query when the scanner asks which tasks are responses
RESPONSE_CONTEXT = "responses"  # the key of a response's context in its task's request


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
    id: str
    tenant: str
    status: str
    url: str | None  # the task's own webhook_url


@dataclass(frozen=True, slots=True)
class Scanned:
    """One page of the tasks table, read in commit order."""
    tasks: list[FinishedTask]  # batch lines left out: their batch has events of its own
    position: int              # where the page ended: the scanner's next cursor


def _is_response(request: str | None) -> bool:
    try:
        parsed = orjson.loads(request or "{}")
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get(RESPONSE_CONTEXT), dict)


def _endpoint(r: dict[str, Any]) -> Endpoint:
    return Endpoint(r["id"], r["tenant"], r["url"], orjson.loads(r["events"]), r["created_at"])


def delivery_statement(d: Delivery) -> Statement:
    """Queue one delivery. Its id is derived from the event and the target, so queueing it
    again changes nothing."""
    return ("INSERT INTO webhook_deliveries (id, tenant, endpoint_id, url, event_type, payload, "
            "state, attempts, next_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (d.id, d.tenant, d.endpoint_id, d.url, d.event_type, d.payload, PENDING,
             d.created_at, d.created_at))


def _bucket(n: int) -> int:
    """The placeholders a list of ``n`` values gets: a power of 4 from 4, so the due query
    has a handful of texts (PostgreSQL's are each worked out once, and kept)."""
    size = 4
    while size < n:
        size *= 4
    return size if n else 0


def _not_in(column: str, values: Sequence[str]) -> str:
    n = _bucket(len(values))
    return f" AND {column} NOT IN ({', '.join('?' * n)})" if n else ""


def _padded(values: Sequence[str]) -> list[str]:
    """``values`` and as many empty strings (no id or tenant is empty) as fill its bucket."""
    return [*values, *[""] * (_bucket(len(values)) - len(values))]


def cursor_statement(position: int) -> Statement:
    """Move the scanner's cursor, forward only."""
    return ("INSERT INTO webhook_cursor (name, position) VALUES (?, ?) ON CONFLICT (name) DO "
            "UPDATE SET position = excluded.position "
            "WHERE excluded.position > webhook_cursor.position", (TASKS_CURSOR, position))


def _scan_sql(position: str, settled: str) -> str:
    """Task rows after a place (the first ``?``), in commit order, up to and including the
    ``?``-th place after it (the second and third ``?``; all of them when there are fewer).
    Whole places: on PostgreSQL a place is a transaction, which may hold many rows."""
    return (
        f"SELECT {position} AS position, t.id, t.tenant, t.status, w.url, "
        "EXISTS (SELECT 1 FROM batch_lines l WHERE l.task_id = t.id) AS in_batch "
        "FROM tasks t LEFT JOIN task_webhooks w ON w.task_id = t.id "
        f"WHERE {position} > ? AND {settled} AND {position} <= COALESCE("
        f"(SELECT {position} FROM tasks t WHERE {position} > ? AND {settled} "
        f"ORDER BY {position} LIMIT 1 OFFSET ?), {position}) "
        f"ORDER BY {position}, t.id")


class WebhookStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- secrets -----------------------------------------------------------------------------
    async def create_secret(self, tenant: str, secret: str) -> bool:
        """Give the tenant ``secret`` unless it has one; True when this call gave it (also when
        the PostgreSQL store runs it again after a cut: the row it finds is its own)."""
        [made] = await self.store.write_together([(
            "INSERT INTO webhook_secrets (tenant, secret) VALUES (?, ?) ON CONFLICT (tenant) DO "
            "UPDATE SET secret = excluded.secret WHERE webhook_secrets.secret = excluded.secret",
            (tenant, secret))])
        return made

    async def rotate_secret(self, tenant: str, secret: str, previous_until: int) -> None:
        """The new secret signs, the old one too until ``previous_until`` (a rotation that
        runs again, after a cut, leaves the previous secret as it was)."""
        await self.store.write_together([(
            "INSERT INTO webhook_secrets (tenant, secret) VALUES (?, ?) ON CONFLICT (tenant) DO "
            "UPDATE SET previous = webhook_secrets.secret, previous_until = ?, "
            "secret = excluded.secret WHERE webhook_secrets.secret <> excluded.secret",
            (tenant, secret, previous_until))])

    async def signing_secrets(self, tenant: str, now_s: int) -> list[str]:
        rows = await self.store.fetch(
            "SELECT secret, previous, previous_until FROM webhook_secrets WHERE tenant = ?",
            tenant)
        if not rows:
            return []
        r = rows[0]
        keep_old = r["previous"] and (r["previous_until"] or 0) > now_s
        return [r["secret"], r["previous"]] if keep_old else [r["secret"]]

    # --- endpoints ---------------------------------------------------------------------------
    async def add_endpoint(self, e: Endpoint) -> None:
        await self.store.write_together([(
            "INSERT INTO webhook_endpoints (id, tenant, url, events, created_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (e.id, e.tenant, e.url, orjson.dumps(e.events).decode(), e.created_at))])

    async def endpoints(self, tenant: str) -> list[Endpoint]:
        return [_endpoint(r) for r in await self.store.fetch(
            "SELECT * FROM webhook_endpoints WHERE tenant = ? ORDER BY created_at, id", tenant)]

    async def delete_endpoint(self, tenant: str, endpoint_id: str) -> bool:
        [gone] = await self.store.write_together([(
            "DELETE FROM webhook_endpoints WHERE id = ? AND tenant = ?", (endpoint_id, tenant))])
        return gone

    async def save_task_url(self, task_id: str, tenant: str, url: str) -> None:
        await self.store.write_together([(
            "INSERT INTO task_webhooks (task_id, tenant, url) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING", (task_id, tenant, url))])

    # --- the scanner -------------------------------------------------------------------------
    async def cursor(self) -> int:
        """Where the scanner stopped; on the very first call, the end of the tasks table (tasks
        finished before webhooks existed have no events)."""
        rows = await self.store.fetch(
            "SELECT position FROM webhook_cursor WHERE name = ?", TASKS_CURSOR)
        if rows:
            return int(rows[0]["position"])
        s = self.store
        [end] = await s.fetch(f"SELECT COALESCE(MAX({s.task_position}), 0) AS position "
                              f"FROM tasks t WHERE {s.settled}")
        position = int(end["position"])
        await s.write_together([cursor_statement(position)])
        return position

    async def finished_since(self, position: int, page: int) -> Scanned:
        """About ``page`` task rows after ``position``, in the order they were committed
        (``Store.task_position``): a row is never committed below a place already read."""
        s = self.store
        rows = await s.fetch(_scan_sql(s.task_position, s.settled), position, position,
                             page - 1)
        return Scanned([FinishedTask(r["id"], r["tenant"], r["status"], r["url"])
                        for r in rows if not r["in_batch"]],
                       int(rows[-1]["position"]) if rows else position)

    async def tenants_with_endpoints(self) -> dict[str, list[Endpoint]]:
        out: dict[str, list[Endpoint]] = {}
        for r in await self.store.fetch("SELECT * FROM webhook_endpoints"):
            e = _endpoint(r)
            out.setdefault(e.tenant, []).append(e)
        return out

    async def responses_among(self, task_ids: Sequence[str]) -> dict[str, str | None]:
        """Which of these tasks are responses (their request carries a response context
        under ``responses``, as ``/v1/responses`` stores it), with their finish reasons."""
        found: dict[str, str | None] = {}
        for start in range(0, len(task_ids), SCAN_IDS):
            chunk = task_ids[start:start + SCAN_IDS]
            for r in await self.store.fetch(
                    "SELECT id, request, finish_reason FROM tasks "
                    f"WHERE id IN ({', '.join('?' * len(chunk))})", *chunk):
                if _is_response(r["request"]):
                    found[r["id"]] = r["finish_reason"]
        return found

    async def enqueue(self, statements: list[Statement]) -> None:
        if statements:
            await self.store.write_together(statements)

    # --- deliveries --------------------------------------------------------------------------
    async def due(self, now_ms: int, *, per_target: int, per_tenant: int, limit: int,
                  skip_ids: Sequence[str] = (), skip_tenants: Sequence[str] = ()
                  ) -> list[Delivery]:
        """Pending deliveries due by ``now_ms``, earliest first: at most ``per_target`` of one
        target (endpoint id and URL) and ``per_tenant`` of one tenant, so neither a target
        nor a tenant with thousands due fills the page; ``skip_ids`` (in flight) and
        ``skip_tenants`` (at their cap) left out."""
        skip = _not_in("id", skip_ids) + _not_in("tenant", skip_tenants)
        # The windows run over the few columns they need; the payloads of the rows picked
        # are read after (with 100,000 due, 0.25 s instead of 0.5 s on SQLite, 5 runs each).
        sql = (
            "SELECT d.id, d.tenant, d.endpoint_id, d.url, d.event_type, d.payload, d.attempts, "
            "d.created_at FROM webhook_deliveries d JOIN (SELECT id, next_at FROM (SELECT t.*, "
            "ROW_NUMBER() OVER (PARTITION BY tenant ORDER BY next_at, id) AS nth_of_tenant "
            "FROM (SELECT id, tenant, next_at, ROW_NUMBER() OVER (PARTITION BY endpoint_id, "
            "url ORDER BY next_at, id) AS nth_of_target FROM webhook_deliveries "
            f"WHERE state = ? AND next_at <= ?{skip}) t WHERE nth_of_target <= ?) u "
            "WHERE nth_of_tenant <= ? ORDER BY next_at, id LIMIT ?) picked ON picked.id = d.id "
            "ORDER BY picked.next_at, d.id")
        rows = await self.store.fetch(sql, PENDING, now_ms, *_padded(skip_ids),
                                      *_padded(skip_tenants), per_target, per_tenant, limit)
        return [Delivery(r["id"], r["tenant"], r["endpoint_id"], r["url"], r["event_type"],
                         r["payload"], r["attempts"], r["created_at"]) for r in rows]

    async def hold_back(self, endpoint_id: str, url: str, until_ms: int) -> None:
        """A target's backoff: none of its pending deliveries is due before ``until_ms``."""
        await self.store.write_together([(
            "UPDATE webhook_deliveries SET next_at = ? WHERE state = ? AND endpoint_id = ? "
            "AND url = ? AND next_at < ?", (until_ms, PENDING, endpoint_id, url, until_ms))])

    async def end_for_deleted(self, endpoint_id: str, at: int) -> None:
        """The endpoint was deleted: its pending deliveries end, unsent, each with its attempt
        saying why."""
        why = "endpoint deleted"
        await self.store.write_together([
            ("INSERT INTO webhook_attempts (delivery_id, attempt, at, status, error) "
             "SELECT id, attempts + 1, CAST(? AS BIGINT), NULL, CAST(? AS TEXT) "
             "FROM webhook_deliveries WHERE state = ? AND endpoint_id = ? "
             "ON CONFLICT DO NOTHING", (at, why, PENDING, endpoint_id)),
            ("UPDATE webhook_deliveries SET attempts = attempts + 1, state = ?, next_at = ?, "
             "last_at = ?, last_status = NULL, last_error = ? "
             "WHERE state = ? AND endpoint_id = ?",
             (FAILED, at, at, why, PENDING, endpoint_id))])

    async def record_attempt(self, d: Delivery, at: int, status: int | None,
                             error: str | None, state: str, next_at: int) -> None:
        n = d.attempts + 1
        await self.store.write_together([
            ("INSERT INTO webhook_attempts (delivery_id, attempt, at, status, error) "
             "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", (d.id, n, at, status, error)),
            ("UPDATE webhook_deliveries SET attempts = ?, state = ?, next_at = ?, last_at = ?, "
             "last_status = ?, last_error = ? WHERE id = ? AND attempts = ?",
             (n, state, next_at, at, status, error, d.id, d.attempts))])

    async def deliveries(self, tenant: str, endpoint_id: str, limit: int
                         ) -> list[dict[str, Any]]:
        found = await self.store.fetch(
            "SELECT id, event_type, state, attempts, created_at, next_at, payload "
            "FROM webhook_deliveries WHERE tenant = ? AND endpoint_id = ? "
            "ORDER BY created_at DESC LIMIT ?", tenant, endpoint_id, limit)
        if not found:
            return []
        attempts: dict[str, list[dict[str, Any]]] = {d["id"]: [] for d in found}
        for a in await self.store.fetch(
                "SELECT delivery_id, attempt, at, status, error FROM webhook_attempts "
                f"WHERE delivery_id IN ({', '.join('?' * len(found))}) "
                "ORDER BY delivery_id, attempt", *attempts):
            attempts[a.pop("delivery_id")].append(a)
        return [{**d, "payload": orjson.loads(d["payload"]), "attempt_log": attempts[d["id"]]}
                for d in found]

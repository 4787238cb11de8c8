"""The webhook loop: turn finished tasks into outbox rows, and send what is due.

At least once, from a durable outbox in the store: an event is a row before any attempt, the
scanner's cursor moves only after the rows of what it read exist, and a delivery is marked
delivered only after a 2xx. A crash anywhere re-sends at worst, with the same ``webhook-id``
(derived from the event and the target), so receivers deduplicate. Retries back off
exponentially (WEBHOOK_RETRY_BASE_S, doubling, capped at WEBHOOK_RETRY_CAP_S) and stop
WEBHOOK_GIVE_UP_AFTER_S (24 h) after the event.

Scanning needs no lease (its rows are idempotent); sending does, so that two edges do not both
send one attempt: Redis ``lock:webhooks``, taken only while something is due, so an idle edge
writes nothing to Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

from aiohttp import ClientError, web

from services.edge.context import EDGE, Edge
from services.edge.webhooks import events, signing, ssrf
from services.edge.webhooks.store import (
    DELIVERED,
    FAILED,
    PENDING,
    Delivery,
    WebhookStore,
    cursor_statement,
    delivery_statement,
)
from shared import logs, loops
from shared.steps import HELD

log = logs.get("sluice.webhooks")
SCAN_PAGE = 500
SEND_PAGE = 64


class WebhookRunner:
    def __init__(self, edge: Edge, http: ssrf.ClientSession) -> None:
        self.edge, self.http = edge, http
        self.store = WebhookStore(edge.store)
        self.settings = edge.settings.webhooks
        self.token = secrets.token_hex(16)
        self.holding = False

    async def tick(self) -> None:
        await self.scan()
        due = await self.store.due(int(time.time() * 1000), SEND_PAGE)
        if not due:
            if self.holding:
                await self.edge.steps.release_lock(self.edge.keys.webhooks_lock, self.token)
                self.holding = False
            return
        if not await self._hold():
            return
        live = {e.id for found in (await self.store.tenants_with_endpoints()).values()
                for e in found}
        async with asyncio.TaskGroup() as tg:
            for d in due:
                gone = d.endpoint_id != events.TASK_URL_TARGET and d.endpoint_id not in live
                tg.create_task(self.drop(d) if gone else self.send(d))

    async def _hold(self) -> bool:
        key, ttl = self.edge.keys.webhooks_lock, self.settings.lease_ms
        if self.holding:
            self.holding = await self.edge.steps.renew_lock(key, self.token, ttl) == HELD
        if not self.holding:
            self.holding = bool(await self.edge.redis.set(key, self.token, nx=True, px=ttl))
        return self.holding

    async def scan(self) -> None:
        position = await self.store.cursor()
        page = await self.store.finished_since(position, SCAN_PAGE)
        if page.position == position:
            return
        by_tenant = await self.store.tenants_with_endpoints() if page.tasks else {}
        rows = []
        for task in page.tasks:
            kind = events.TASK_EVENTS.get(task.status)
            if kind is None:
                continue
            targets = events.subscribed(by_tenant.get(task.tenant, []), kind)
            if task.url:
                targets.append((events.TASK_URL_TARGET, task.url))
            rows += [delivery_statement(d) for d in events.deliveries(
                task.tenant, kind, task.id, {"status": task.status}, targets)]
        await self.store.enqueue([*rows, cursor_statement(page.position)])

    async def drop(self, d: Delivery) -> None:
        """The endpoint was deleted: its pending deliveries end, unsent."""
        now_ms = int(time.time() * 1000)
        await self.store.record_attempt(d, now_ms, None, "endpoint deleted", FAILED, now_ms)

    async def send(self, d: Delivery) -> None:
        now_s = int(time.time())
        signers = await self.store.signing_secrets(d.tenant, now_s)
        body = d.payload.encode()
        status: int | None = None
        error: str | None = None
        if not signers:
            error = "the tenant has no webhook secret"
        else:
            try:
                status, _head = await ssrf.post(self.http, d.url, body,
                                                signing.headers(signers, d.id, now_s, body),
                                                self.settings)
            except ssrf.BlockedAddress as exc:
                error = f"blocked: {exc}"
            except (ClientError, TimeoutError, OSError) as exc:
                error = type(exc).__name__
        now_ms = int(time.time() * 1000)
        ok = status is not None and 200 <= status < 300
        wait_s = min(self.settings.retry_cap_s, self.settings.retry_base_s * 2 ** d.attempts)
        next_at = now_ms + int(wait_s * 1000)
        gave_up = next_at > d.created_at + self.settings.give_up_after_s * 1000
        state = DELIVERED if ok else FAILED if gave_up else PENDING
        await self.store.record_attempt(d, now_ms, status, error, state, next_at)
        log.info("webhook_attempt", delivery=d.id, event_type=d.event_type, attempt=d.attempts + 1,
                 status=status, error=error, state=state)


async def webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    edge = app[EDGE]
    http = ssrf.session(edge.settings.webhooks)
    runner = WebhookRunner(edge, http)
    try:
        async with loops.in_background(runner.tick, "webhooks", runner.settings.tick_s):
            yield
    finally:
        with contextlib.suppress(Exception):
            if runner.holding:
                await edge.steps.release_lock(edge.keys.webhooks_lock, runner.token)
        await http.close()

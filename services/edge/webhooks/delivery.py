"""The webhook loop: turn finished tasks into outbox rows, and send what is due.

At least once, from a durable outbox in the store: an event is a row before any attempt, the
scanner's cursor moves only after the rows of what it read exist, and a delivery is marked
delivered only after a 2xx. A crash anywhere re-sends at worst, with the same ``webhook-id``
(derived from the event and the target), so receivers deduplicate. Retries back off
exponentially (WEBHOOK_RETRY_BASE_S, doubling, capped at WEBHOOK_RETRY_CAP_S) and stop
WEBHOOK_GIVE_UP_AFTER_S (24 h) after the event.

Scanning needs no lease (its rows are idempotent); sending does, so that two edges do not both
send one attempt: Redis ``lock:webhooks``, taken only while something is due or in flight, so
an idle edge writes nothing to Redis.

Targets are isolated (``lanes``): a tick starts what the caps allow and does not wait for it,
so a target that hangs holds its own few connections until WEBHOOK_TIMEOUT_S and nothing
else, and one that keeps failing moves its own deliveries back, alone.
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
from services.edge.webhooks.lanes import Lanes, backoff_s
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


class WebhookRunner:
    """The scanner and the sender. A tick scans, then starts what may start now (``Lanes``)
    and returns: the sends run in ``group``, each on its own, so a slow target holds its own
    lane and nothing else."""

    def __init__(self, edge: Edge, http: ssrf.ClientSession, group: asyncio.TaskGroup) -> None:
        self.edge, self.http, self.group = edge, http, group
        self.store = WebhookStore(edge.store)
        self.settings = s = edge.settings.webhooks
        self.lanes = Lanes(s.endpoint_concurrency, s.tenant_concurrency, s.max_in_flight)
        self.sends: set[asyncio.Task[None]] = set()
        self.token = secrets.token_hex(16)
        self.holding = False

    async def tick(self) -> None:
        await self.scan()
        lanes, s = self.lanes, self.settings
        due = await self.store.due(
            int(time.time() * 1000), per_target=s.endpoint_concurrency,
            per_tenant=s.tenant_concurrency,
            # Room for the rows of full lanes (each at most per_target), which are skipped.
            limit=2 * s.max_in_flight, skip_ids=sorted(lanes.sending),
            skip_tenants=lanes.full_tenants()) if lanes.room() > 0 else []
        if not due and not lanes.sending:
            if self.holding:
                await self.edge.steps.release_lock(self.edge.keys.webhooks_lock, self.token)
                self.holding = False
            return
        if not await self._hold() or not due:
            return
        live = {e.id for found in (await self.store.tenants_with_endpoints()).values()
                for e in found}
        gone: set[str] = set()
        for d in due:
            if d.endpoint_id != events.TASK_URL_TARGET and d.endpoint_id not in live:
                gone.add(d.endpoint_id)
            elif lanes.take(d):
                self._start(d)
        for endpoint_id in sorted(gone):
            await self.store.end_for_deleted(endpoint_id, int(time.time() * 1000))

    def _start(self, d: Delivery) -> None:
        task = self.group.create_task(self._send_in_lane(d))
        self.sends.add(task)
        task.add_done_callback(self.sends.discard)

    async def _send_in_lane(self, d: Delivery) -> None:
        ok = False
        try:
            ok = await self.send(d)
        except Exception:  # a store write failed: the delivery stays pending, tried again
            log.exception("webhook_send_failed", delivery=d.id)
        finally:
            failures = self.lanes.done(d, ok)
        wait_s = backoff_s(failures, self.settings.retry_base_s, self.settings.retry_cap_s)
        if wait_s:
            log.info("webhook_target_backoff", endpoint=d.endpoint_id, failures=failures,
                     wait_s=wait_s)
            try:
                await self.store.hold_back(d.endpoint_id, d.url,
                                           int((time.time() + wait_s) * 1000))
            except Exception:  # the backoff is lost, not the deliveries
                log.exception("webhook_backoff_not_stored", endpoint=d.endpoint_id)

    def stop_sending(self) -> None:
        """Cancel the sends in flight (at shutdown): each is sent again later, with the same
        webhook-id, by whichever edge sends next."""
        for task in self.sends:
            task.cancel()

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
        # Only tasks someone may hear of are looked at again, to tell responses apart.
        heard = [t for t in page.tasks
                 if t.status in events.TASK_EVENTS and (t.url or by_tenant.get(t.tenant))]
        responses = await self.store.responses_among([t.id for t in heard]) if heard else {}
        rows = []
        for task in heard:
            event = (events.response_event(task.id, task.status, responses[task.id])
                     if task.id in responses else events.task_event(task.id, task.status))
            if event is None:
                continue
            targets = events.subscribed(by_tenant.get(task.tenant, []), event.kind)
            if task.url:
                targets.append((events.TASK_URL_TARGET, task.url))
            rows += [delivery_statement(d) for d in events.deliveries(
                task.tenant, event.kind, event.subject_id, {"status": event.status}, targets)]
        await self.store.enqueue([*rows, cursor_statement(page.position)])

    async def send(self, d: Delivery) -> bool:
        """One attempt of ``d``, recorded; whether it was delivered."""
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
        return ok


async def webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    edge = app[EDGE]
    stopping = asyncio.Event()
    runner: WebhookRunner | None = None

    async def run() -> None:
        # The sends' task group lives in this one task, from start to stop.
        nonlocal runner
        http = ssrf.session(edge.settings.webhooks)
        try:
            async with asyncio.TaskGroup() as group:
                runner = WebhookRunner(edge, http, group)
                try:
                    async with loops.in_background(runner.tick, "webhooks",
                                                   runner.settings.tick_s):
                        await stopping.wait()
                finally:
                    runner.stop_sending()
        finally:
            with contextlib.suppress(Exception):
                if runner is not None and runner.holding:
                    await edge.steps.release_lock(edge.keys.webhooks_lock, runner.token)
            await http.close()

    task = asyncio.create_task(run())
    try:
        yield
    finally:
        stopping.set()
        await task

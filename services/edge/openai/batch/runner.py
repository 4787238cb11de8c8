"""The batch runner: moves every active OpenAI batch along, in one edge replica at a time.

It runs in the edge because a batch needs the edge's own checks (a line passes only if
``/v1/chat/completions`` would accept its body) and its submit step; a lease in Redis
(``lock:batch-runner``, renewed every tick) keeps replicas from doing the same work twice, and
another replica takes over within the lease's TTL when the holder dies.

Crash safety comes from the store, not from this process: a batch's status, its lines with
their task ids and how many lines were queued are rows, each step is idempotent, and a kill at
any point leaves the next holder to redo at most one step:
- a line's task id is derived from the batch id and line number, and it is queued with an
  idempotency key of its own, so queueing a line again after a crash names the same task;
- a line is done when its task's final row is in the store (the processor writes the row
  before it marks the task finished), so progress is read, never counted in memory;
- a finished batch's output and error files are written in the transaction that moves the
  batch to its final status, from the lines in order: each line exactly once in one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from services.edge.context import EDGE, Edge
from services.edge.openai.batch import batches as b
from services.edge.openai.batch.files import OUTPUT_PURPOSE
from services.edge.openai.batch.store import (
    BatchRecord,
    BatchStore,
    FileMeta,
    Line,
    save_file_statements,
)
from services.edge.tasks.validation import FLEX_PRIORITY
from services.edge.webhooks import events
from services.edge.webhooks.store import WebhookStore, delivery_statement
from shared import logs, loops, tasks
from shared.governor import estimate_tokens
from shared.steps import HELD, RateLimited, TenantLimits, TooManyActive
from shared.store import Statement
from shared.timeutil import now_ms

log = logs.get("sluice.batches")
_QUEUED_EVENT = orjson.dumps({"status": tasks.QUEUED}).decode()
RATE_WINDOW_MS = 60_000
# Batch lines queue behind the tenant's interactive work: the priority /v1's service_tier
# "flex" gives (lower runs sooner), paced besides by BATCH_LINES_IN_FLIGHT.
BATCH_LINE_PRIORITY = FLEX_PRIORITY


class BatchRunner:
    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.store = BatchStore(edge.store)
        self.hooks = WebhookStore(edge.store)
        self.settings = edge.settings.batch_api
        self.token = secrets.token_hex(16)
        self.holding = False

    # --- the lease -----------------------------------------------------------------------------
    async def hold(self) -> bool:
        key, ttl = self.edge.keys.batch_runner_lock, self.settings.runner_lease_ms
        if self.holding:
            self.holding = await self.edge.steps.renew_lock(key, self.token, ttl) == HELD
        if not self.holding:
            self.holding = bool(await self.edge.redis.set(key, self.token, nx=True, px=ttl))
        return self.holding

    async def release(self) -> None:
        if self.holding:
            await self.edge.steps.release_lock(self.edge.keys.batch_runner_lock, self.token)
            self.holding = False

    # --- one tick ------------------------------------------------------------------------------
    async def tick(self) -> None:
        active = await self.store.active_batch_ids(b.ACTIVE)
        if not active:  # an idle edge leaves nothing in Redis
            await self.release()
            return
        if not await self.hold():
            return
        # BATCH_LINES_IN_FLIGHT is shared by every batch, oldest first: whatever the number of
        # batches, the processors' other slots stay free for interactive tasks.
        budget = self.settings.lines_in_flight
        for batch_id in active:
            record = await self.store.get_batch(batch_id)
            if record is None:
                continue
            if record.status == b.VALIDATING:
                await self.validate(record)
            elif record.status in (b.IN_PROGRESS, b.CANCELLING):
                budget -= await self.advance(record, max(0, budget))
            elif record.status == b.FINALIZING:
                await self.finish(record, b.COMPLETED)

    async def validate(self, record: BatchRecord) -> None:
        doc, now_s = record.doc, int(time.time())
        meta = await self.store.get_file(record.tenant, doc["input_file_id"])
        content = await self.store.file_content(meta.id) if meta else b""
        # Up to 50,000 lines and 200 MB: checked off the event loop, which serves requests.
        checked = await asyncio.to_thread(b.check_file, record.id, content, self.edge.settings)
        if meta is None:
            checked.errors[:] = [{"code": "file_not_found", "line": None, "param":
                                  "input_file_id", "message": "The input file was deleted."}]
        if checked.errors:
            failed = b.moved(doc, b.FAILED, now_s)
            failed["errors"] = {"object": "list", "data": checked.errors}
            await self.store.update_batch(_with(record, failed), [b.VALIDATING],
                                          await self._event(record, b.FAILED))
            log.info("batch_failed", batch_id=record.id, errors=len(checked.errors))
            return
        running = b.moved(doc, b.IN_PROGRESS, now_s)
        running["request_counts"] = {"total": len(checked.lines), "completed": 0, "failed": 0}
        running["model"] = checked.model
        await self.store.update_batch(_with(record, running), [b.VALIDATING],
                                      self.store.lines_statements(record.id, checked.lines))
        log.info("batch_started", batch_id=record.id, lines=len(checked.lines))

    async def advance(self, record: BatchRecord, budget: int) -> int:
        """Queue lines up to ``budget`` in flight, stop a cancelled or expired batch, finish a
        batch whose lines are all done. Returns the batch's lines in flight."""
        doc = record.doc
        total = int(doc["request_counts"]["total"])
        progress = await self.store.progress(record.id)
        expired = int(time.time()) >= int(doc["expires_at"])
        stopping = record.status == b.CANCELLING or expired
        submitted = record.submitted
        if stopping:
            await self._cancel_queued(record)
        else:
            target = min(total, progress.done + budget)
            if target > submitted:
                submitted += await self._queue_lines(record, submitted, target)
        counts = {"total": total, "completed": progress.succeeded, "failed": progress.failed}
        updated = {**doc, "request_counts": counts,
                   "usage": b.usage(progress.prompt_tokens, progress.completion_tokens)}
        current = BatchRecord(record.id, record.tenant, record.status, submitted, updated)
        if progress.done < (submitted if stopping else total):
            if current != record:
                await self.store.update_batch(current, [record.status])
            return submitted - progress.done
        if record.status == b.CANCELLING:
            await self.finish(current, b.CANCELLED)
        elif expired:
            await self.finish(current, b.EXPIRED)
        else:
            final = _with(current, b.moved(updated, b.FINALIZING, int(time.time())))
            if await self.store.update_batch(final, [b.IN_PROGRESS]):
                await self.finish(final, b.COMPLETED)
        return 0

    async def _queue_lines(self, record: BatchRecord, start: int, stop: int) -> int:
        """Queue lines ``start``..``stop - 1``; the count queued (fewer when the tenant is at
        its active cap: the rest wait for a later tick)."""
        queued = 0
        for line in await self.store.lines(record.id, start, stop):
            if not await self._queue_line(record, line):
                break
            queued += 1
        if queued:  # the cursor moves after the tasks exist: a crash here re-queues nothing new
            await self.store.update_batch(
                BatchRecord(record.id, record.tenant, record.status, start + queued,
                            record.doc), [record.status])
        return queued

    async def _queue_line(self, record: BatchRecord, line: Line) -> bool:
        s = self.edge.settings
        payload: dict[str, Any] = orjson.loads(line.request)
        # A batch line waits behind the tenant's interactive tasks (aging: it is never starved),
        # unless the line names a priority of its own; it counts in the tenant's fair share.
        priority = payload.get("priority", BATCH_LINE_PRIORITY)
        window_s = int(record.doc["expires_at"]) - int(record.doc["created_at"])
        result = await self.edge.steps.submit(
            task_id=line.task_id, tenant=record.tenant, request_json=orjson.dumps(payload),
            model=str(payload.get("model") or ""), now=now_ms(),
            idem_key=f"~batch/{record.id}/{line.line}", body_hash="line",
            idempotency_ttl_s=window_s + 86_400, first_event=_QUEUED_EVENT,
            task_ttl_s=s.task_ttl_s,
            # Lines are paced by BATCH_LINES_IN_FLIGHT, not the per-minute rate, but they count
            # towards the tenant's cap of active tasks.
            limits=TenantLimits(0, RATE_WINDOW_MS, s.max_active_tasks),
            priority=priority, cost=estimate_tokens(payload))
        return not isinstance(result, RateLimited | TooManyActive)

    async def _cancel_queued(self, record: BatchRecord) -> None:
        """Stop every queued line of a cancelled or expired batch: one not yet running ends
        cancelled at once, a running one is told to stop (the same step as DELETE a task)."""
        for task_id in await self.store.unfinished_task_ids(record.id, record.submitted):
            await self.edge.steps.cancel(task_id=task_id, tenant=record.tenant, now=now_ms())

    async def finish(self, record: BatchRecord, final_status: str) -> None:
        """Write the output and error files and move to ``final_status``, in one transaction."""
        out: list[bytes] = []
        errors: list[bytes] = []
        succeeded = failed = prompt = completion = 0
        for line, row in await self.store.results(record.id):
            if row is not None and row["status"] == tasks.SUCCEEDED:
                out.append(b.output_line(line, row))
                succeeded += 1
            else:
                errors.append(b.error_line(line, row, final_status))
                failed += int(row is not None and row["status"] == tasks.FAILED)
            if row is not None:
                prompt += int(row.get("prompt_tokens") or 0)
                completion += int(row.get("completion_tokens") or 0)
        now_s = int(time.time())
        doc = b.moved(record.doc, final_status, now_s)
        doc["request_counts"] = {"total": len(out) + len(errors), "completed": succeeded,
                                 "failed": failed}
        doc["usage"] = b.usage(prompt, completion)
        statements: list[Statement] = []
        for kind, content in (("output", out), ("error", errors)):
            if not content:
                continue
            data = b"\n".join(content) + b"\n"
            meta = FileMeta(b.derived_file_id(record.id, kind), record.tenant, OUTPUT_PURPOSE,
                            f"{record.id}_{kind}.jsonl", len(data), len(content), now_s, None)
            doc[f"{kind}_file_id"] = meta.id
            statements += save_file_statements(meta, data)
        statements += await self._event(record, final_status)
        if await self.store.update_batch(_with(record, doc), [record.status], statements):
            log.info("batch_finished", batch_id=record.id, status=final_status,
                     succeeded=succeeded, errors=len(errors))


    async def _event(self, record: BatchRecord, final_status: str) -> list[Statement]:
        """The outbox rows of the batch's final event, written in the transaction of its
        final status, and only if that status change takes (``update_batch``)."""
        kind = events.BATCH_EVENTS[final_status]
        targets = events.subscribed(await self.hooks.endpoints(record.tenant), kind)
        return [delivery_statement(d) for d in
                events.deliveries(record.tenant, kind, record.id, {"status": final_status},
                                  targets)]


def _with(record: BatchRecord, doc: dict[str, Any]) -> BatchRecord:
    return BatchRecord(record.id, record.tenant, doc["status"], record.submitted, doc)


async def runner_ctx(app: web.Application) -> AsyncIterator[None]:
    """The runner as a background task of the edge, stopped (and its lease given back) when
    the edge stops."""
    runner = BatchRunner(app[EDGE])
    try:
        async with loops.in_background(runner.tick, "batch-runner", runner.settings.tick_s):
            yield
    finally:
        with contextlib.suppress(Exception):
            await runner.release()

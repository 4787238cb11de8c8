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

No tenant's batch can hold another's back:
- ``BATCH_LINES_IN_FLIGHT`` is shared among the tenants with lines to run by their weights
  (``TENANT_WEIGHTS``, as the coordinators publish them for the waiting room), each capped at
  ``BATCH_TENANT_LINES_IN_FLIGHT`` (``share_out``);
- a line's idempotency key starts with the prefix no client may send, and a line that cannot
  become its own task anyway (its key names another task) or whose task was lost (Redis lost
  it unfinished) gets a final row of its own, failed with a code that says so: every line
  ends, so every batch ends (cancel and expiry too), and its lines stop holding the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
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
    Progress,
    save_file_statements,
)
from services.edge.tasks.service import INTERNAL_KEY_PREFIX, QUEUED_EVENT, RATE_WINDOW_MS
from services.edge.tasks.validation import FLEX_PRIORITY
from services.edge.webhooks import events
from services.edge.webhooks.store import WebhookStore, delivery_statement
from shared import logs, loops, tasks
from shared.governor import estimate_tokens
from shared.steps import (
    HELD,
    Conflict,
    Existing,
    Missing,
    RateLimited,
    TenantLimits,
    TooManyActive,
)
from shared.store import Statement, TaskRow
from shared.timeutil import now_ms

log = logs.get("sluice.batches")
# Batch lines queue behind the tenant's interactive work: the priority /v1's service_tier
# "flex" gives (lower runs sooner), paced besides by BATCH_LINES_IN_FLIGHT.
BATCH_LINE_PRIORITY = FLEX_PRIORITY
# Lines that ended in the runner, never at the provider: the error file's top-level error.
KEY_TAKEN = "batch_line_key_taken"
LOST = "batch_line_lost"
RUNNER_ERRORS = {
    KEY_TAKEN: "This request was not executed: its idempotency key already names another "
               "task of this tenant.",
    LOST: "This request was not executed to the end: its task was lost from the queue "
          "before it finished.",
}
LOST_CHECK_TICKS = 20  # how often (in ticks) running batches are checked for lost tasks
SWEEP_S = 60.0         # how often this edge deletes the uploads whose edge died mid-way
_QUEUED, _WAIT = "queued", "wait"


def line_key(batch_id: str, line: int) -> str:
    """The idempotency key of a batch's line: under the prefix no client may send."""
    return f"{INTERNAL_KEY_PREFIX}batch/{batch_id}/{line}"


@dataclass(frozen=True, slots=True)
class Demand:
    in_flight: int  # a tenant's batch lines queued or running
    waiting: int    # its batch lines not queued yet


def share_out(demands: Mapping[str, Demand], weights: Mapping[str, float], budget: int,
              per_tenant: int) -> dict[str, int]:
    """How many new lines each tenant may queue now.

    The free part of ``budget`` goes one line at a time to the tenant with the fewest lines in
    flight for its weight (weighted max-min fairness, the waiting room's shares), never past
    ``per_tenant`` in flight nor the lines it has waiting; ties go to the tenant named first
    (the one with the oldest batch). Lines in flight are never taken back: a tenant above its
    share gets no new line until its own end, so a newcomer waits at most one line-time."""
    free = budget - sum(d.in_flight for d in demands.values())
    new = dict.fromkeys(demands, 0)
    heap: list[tuple[float, int, str]] = []
    for order, (tenant, d) in enumerate(demands.items()):
        if min(d.waiting, per_tenant - d.in_flight) > 0:
            heap.append(((d.in_flight + 1) / weights.get(tenant, 1.0), order, tenant))
    heapq.heapify(heap)
    while free > 0 and heap:
        _, order, tenant = heapq.heappop(heap)
        new[tenant] += 1
        free -= 1
        d = demands[tenant]
        held = d.in_flight + new[tenant]
        if new[tenant] < d.waiting and held < per_tenant:
            heapq.heappush(heap, ((held + 1) / weights.get(tenant, 1.0), order, tenant))
    return new


def parse_weights(raw: Mapping[Any, Any]) -> dict[str, float]:
    """The tenants' weights as the coordinators wrote them to ``tenant_weights`` (from
    ``TENANT_WEIGHTS``, parsed there); a value that is not a positive number, which no
    coordinator writes, weighs 1."""
    weights: dict[str, float] = {}
    for tenant, value in raw.items():
        with contextlib.suppress(ValueError):
            if (weight := float(value)) > 0:
                weights[str(tenant)] = weight
    return weights


class BatchRunner:
    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.store = BatchStore(edge.store)
        self.hooks = WebhookStore(edge.store)
        self.settings = edge.settings.batch_api
        self.token = secrets.token_hex(16)
        self.holding = False
        self.ticks = 0
        self.swept_at = 0.0

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
        await self.sweep_uploads()
        active = await self.store.active_batch_ids(b.ACTIVE)
        if not active:  # an idle edge leaves nothing in Redis
            await self.release()
            return
        if not await self.hold():
            return
        self.ticks += 1
        running: list[tuple[BatchRecord, Progress]] = []
        for batch_id in active:
            record = await self.store.get_batch(batch_id)
            if record is None:
                continue
            if record.status == b.VALIDATING:
                await self.validate(record)
            elif record.status == b.CANCELLING or (
                    record.status == b.IN_PROGRESS and _expired(record)):
                await self.stop(record)
            elif record.status == b.IN_PROGRESS:
                running.append((record, await self.store.progress(record.id)))
            elif record.status == b.FINALIZING:
                await self.finish(record, b.COMPLETED)
        if running:
            await self.run(running)

    async def sweep_uploads(self) -> None:
        """Now and then, delete the uploads whose edge died mid-way (older than any upload
        may last): every edge does, its deletes are idempotent."""
        now = time.monotonic()
        if now - self.swept_at < SWEEP_S:
            return
        self.swept_at = now
        limit = self.settings.upload_timeout_s + SWEEP_S
        if swept := await self.store.sweep_uploads(int(time.time() - limit)):
            log.info("uploads_swept", files=swept)

    async def run(self, running: Sequence[tuple[BatchRecord, Progress]]) -> None:
        """Queue the running batches' next lines: BATCH_LINES_IN_FLIGHT in all, whatever the
        number of batches, so the processors' other slots stay free for interactive tasks;
        shared among tenants (``share_out``), each tenant's share spent oldest batch first."""
        demands: dict[str, Demand] = {}
        for record, progress in running:
            d = demands.get(record.tenant, Demand(0, 0))
            demands[record.tenant] = Demand(
                d.in_flight + max(0, record.submitted - progress.done),
                d.waiting + max(0, _total(record) - record.submitted))
        weights = parse_weights(await self.edge.redis.hgetall(self.edge.keys.tenant_weights))
        allowed = share_out(demands, weights, self.settings.lines_in_flight,
                            self.settings.tenant_lines_in_flight)
        for record, progress in running:
            new = min(allowed[record.tenant], max(0, _total(record) - record.submitted))
            allowed[record.tenant] -= new
            await self.advance(record, progress, new)

    async def validate(self, record: BatchRecord) -> None:
        doc, now_s = record.doc, int(time.time())
        meta = await self.store.get_file(record.tenant, doc["input_file_id"])
        content = await self.store.file_content(meta.id) if meta else b""
        # Up to 50,000 lines and 200 MB: checked off the event loop, which serves requests.
        checked = await asyncio.to_thread(b.check_file, record.id, content, self.edge.settings,
                                          doc.get("endpoint") or b.ENDPOINT)
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

    async def advance(self, record: BatchRecord, progress: Progress, new: int) -> None:
        """Queue up to ``new`` more lines of a running batch, finish it when its lines are
        all done; now and then, fail the lines whose task was lost."""
        submitted = record.submitted
        if self.ticks % LOST_CHECK_TICKS == 0 and submitted > progress.done:
            if await self._fail_lost(record):
                progress = await self.store.progress(record.id)
        if new > 0:
            submitted += await self._queue_lines(record, submitted, submitted + new)
        current = _counted(record, progress, submitted)
        if progress.done < _total(record):
            if current != record:
                await self.store.update_batch(current, [record.status])
            return
        final = _with(current, b.moved(current.doc, b.FINALIZING, int(time.time())))
        if await self.store.update_batch(final, [b.IN_PROGRESS]):
            await self.finish(final, b.COMPLETED)

    async def stop(self, record: BatchRecord) -> None:
        """A cancelled or expired batch: no new line; queued ones are cancelled, running ones
        told to stop; it ends once every queued line has."""
        await self._cancel_queued(record)
        progress = await self.store.progress(record.id)
        current = _counted(record, progress, record.submitted)
        if progress.done < record.submitted:
            if current != record:
                await self.store.update_batch(current, [record.status])
        elif record.status == b.CANCELLING:
            await self.finish(current, b.CANCELLED)
        else:
            await self.finish(current, b.EXPIRED)

    async def _queue_lines(self, record: BatchRecord, start: int, stop: int) -> int:
        """Queue lines ``start``..``stop - 1``; the count queued (fewer when the tenant is at
        its active cap: the rest wait for a later tick). A line that cannot become its task
        counts as queued, with its failed row written first."""
        queued = 0
        for line in await self.store.lines(record.id, start, stop):
            outcome = await self._queue_line(record, line)
            if outcome == _WAIT:
                break
            if outcome != _QUEUED:
                await self._fail_lines(record, [line], outcome)
            queued += 1
        if queued:  # the cursor moves after the tasks exist: a crash here re-queues nothing new
            await self.store.update_batch(
                BatchRecord(record.id, record.tenant, record.status, start + queued,
                            record.doc), [record.status])
        return queued

    async def _queue_line(self, record: BatchRecord, line: Line) -> str:
        """``_QUEUED``, ``_WAIT`` (the tenant is at a limit), or why the line failed."""
        s = self.edge.settings
        payload: dict[str, Any] = orjson.loads(line.request)
        # A batch line waits behind the tenant's interactive tasks (aging: it is never starved),
        # unless the line names a priority of its own; it counts in the tenant's fair share.
        priority = payload.get("priority", BATCH_LINE_PRIORITY)
        window_s = int(record.doc["expires_at"]) - int(record.doc["created_at"])
        result = await self.edge.steps.submit(
            task_id=line.task_id, tenant=record.tenant, request_json=orjson.dumps(payload),
            model=str(payload.get("model") or ""), now=now_ms(),
            idem_key=line_key(record.id, line.line), body_hash="line",
            idempotency_ttl_s=window_s + 86_400, first_event=QUEUED_EVENT,
            task_ttl_s=s.task_ttl_s,
            # Lines are paced by BATCH_LINES_IN_FLIGHT, not the per-minute rate, but they count
            # towards the tenant's cap of active tasks.
            limits=TenantLimits(0, RATE_WINDOW_MS, s.max_active_tasks),
            priority=priority, cost=estimate_tokens(payload))
        match result:
            case RateLimited() | TooManyActive():
                return _WAIT
            case Conflict(id=other) | Existing(id=other) if other != line.task_id:
                # Its key names another task: only a client that took the key before the
                # prefix was reserved does that. The line fails; the batch goes on.
                log.warning("batch_line_key_taken", batch_id=record.id, line=line.line,
                            task_id=other)
                return KEY_TAKEN
        return _QUEUED

    async def _cancel_queued(self, record: BatchRecord) -> None:
        """Stop every queued line of a cancelled or expired batch: one not yet running ends
        cancelled at once, a running one is told to stop (the same step as DELETE a task).
        One whose task Redis no longer knows, with no final row either, was lost: it fails."""
        lost = []
        for line in await self.store.unfinished_lines(record.id, record.submitted):
            result = await self.edge.steps.cancel(task_id=line.task_id, tenant=record.tenant,
                                                  now=now_ms())
            if isinstance(result, Missing):
                lost.append(line)
        await self._fail_lines(record, lost, LOST)

    async def _fail_lost(self, record: BatchRecord) -> bool:
        """Fail the queued lines with no final row whose task Redis no longer knows.

        Why that is safe: a task's hash exists from its submit (before the cursor passes its
        line) until EVENTS_RETENTION_S after its row was written, so a line read without a row
        whose hash is then gone was lost unfinished (Redis restarted without its data, or the
        task outlived TASK_TTL_S). Should its processor still write a result, that row's
        fence (1 and up) replaces the runner's (0)."""
        unfinished = await self.store.unfinished_lines(record.id, record.submitted)
        if not unfinished:
            return False
        async with self.edge.redis.pipeline(transaction=False) as p:
            for line in unfinished:
                p.exists(self.edge.keys.task(line.task_id))
            known = await p.execute()
        lost = [line for line, n in zip(unfinished, known, strict=True) if not n]
        await self._fail_lines(record, lost, LOST)
        return bool(lost)

    async def _fail_lines(self, record: BatchRecord, lines: Sequence[Line], code: str) -> None:
        """A failed final row for each line, unless it has one: the line is done."""
        now = now_ms()
        error = orjson.dumps({"code": code, "message": RUNNER_ERRORS[code]}).decode()
        for line in lines:
            model = orjson.loads(line.request).get("model")
            await self.edge.store.save_task_if_absent(TaskRow(
                id=line.task_id, tenant=record.tenant, status=tasks.FAILED, model=model,
                request=line.request, content=None, reasoning_content=None,
                finish_reason=None, prompt_tokens=None, completion_tokens=None,
                total_tokens=None, attempts=0, error=error, batch_id=None, processor=None,
                fence=0, created_at=now, started_at=None, completed_at=now))
            log.warning("batch_line_failed", batch_id=record.id, line=line.line, code=code)

    async def finish(self, record: BatchRecord, final_status: str) -> None:
        """Write the output and error files and move to ``final_status``, in one transaction."""
        out: list[bytes] = []
        errors: list[bytes] = []
        succeeded = failed = prompt = completion = 0
        endpoint = record.doc.get("endpoint") or b.ENDPOINT
        for line, row in await self.store.results(record.id):
            if row is not None and row["status"] == tasks.SUCCEEDED:
                out.append(b.output_line(line, row, endpoint))
                succeeded += 1
            else:
                errors.append(_error_line(line, row, final_status))
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


def _total(record: BatchRecord) -> int:
    return int(record.doc["request_counts"]["total"])


def _expired(record: BatchRecord) -> bool:
    return int(time.time()) >= int(record.doc["expires_at"])


def _counted(record: BatchRecord, progress: Progress, submitted: int) -> BatchRecord:
    """The record with its live counts and usage, and cursor ``submitted``."""
    counts = {"total": _total(record), "completed": progress.succeeded,
              "failed": progress.failed}
    doc = {**record.doc, "request_counts": counts,
           "usage": b.usage(progress.prompt_tokens, progress.completion_tokens)}
    return BatchRecord(record.id, record.tenant, record.status, submitted, doc)


def _error_line(line: Line, row: dict[str, Any] | None, final_status: str) -> bytes:
    """A line the runner failed (it never ran to an answer: a top-level ``error``, as for a
    cancelled line), else the batch's usual error line."""
    error = tasks.loads_or_none(row.get("error")) if row is not None else None
    code = error.get("code") if isinstance(error, dict) else None
    if row is not None and row["status"] == tasks.FAILED and code in RUNNER_ERRORS:
        return orjson.dumps({"id": b.request_id(line.task_id), "custom_id": line.custom_id,
                             "response": None,
                             "error": {"code": code, "message": RUNNER_ERRORS[code]}})
    return b.error_line(line, row, final_status)


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

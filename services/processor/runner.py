"""One task on one processor: lease, attempts, live deltas, store row, terminal state.

Order of the final steps matters: the row goes to the store first (with our fence), then the
task turns terminal in Redis, then the batch entry is acknowledged by the caller. A crash
between any two steps leaves the task to be reclaimed, and the fenced, idempotent store write
makes running those steps again harmless.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from services.processor import provider
from services.processor.assembler import Delta, ProviderError, Usage
from services.processor.deadlines import deadline_error
from services.processor.governor import DeadlineExceeded, is_rate_limit
from services.processor.leases import Lease
from shared import deadlines, logs, tasks
from shared.redis_conn import hash_of
from shared.store import TaskRow
from shared.timeutil import iso, now_ms

if TYPE_CHECKING:
    from services.processor.worker import Processor

log = logs.get("sluice.processor")
T = TypeVar("T")


class Outcome(Enum):
    DONE = "done"          # terminal in Redis (by us or before us)
    BUSY = "busy"          # another live processor holds the lease
    LOST = "lost"          # our lease was lost midway: the new holder finishes it
    HANDOFF = "handoff"    # we are draining: handed back unfinished


class _Stop(Exception):
    """The attempt was interrupted on purpose (cancel, lease lost, drain)."""


@dataclass(slots=True)
class Partial:
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    first_token_at: float | None = None

    def add(self, deltas: list[Delta]) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        for d in deltas:
            getattr(self, d.kind).append(d.text)


class TaskRun:
    def __init__(self, proc: Processor, task_id: str, batch_id: str) -> None:
        self.proc, self.task_id, self.batch_id = proc, task_id, batch_id
        self.stop_reason: str | None = None
        self._job: asyncio.Future[Any] | None = None
        self.token = secrets.token_hex(16)  # kept across Redis reconnects: begin is re-entrant
        self.lease: Lease | None = None
        self.started = time.perf_counter()
        self.deadline_at: int | None = None

    # --- entry point --------------------------------------------------------------------------
    async def run(self) -> Outcome:
        p, k, token = self.proc, self.proc.keys, self.token
        reply = await p.scripts.begin(
            keys=[k.task(self.task_id), k.lease(self.task_id), k.events(self.task_id)],
            args=[token, p.settings.batching.lock_ttl_ms, now_ms(), p.name])
        if reply[0] == "missing":
            log.warning("task_missing", task_id=self.task_id)
            return Outcome.DONE
        if reply[0] == "terminal":
            await self._ensure_row_for_terminal()
            return Outcome.DONE
        if reply[0] == "busy":
            return Outcome.BUSY
        self.lease = Lease(self.task_id, token, int(reply[1]),
                           on_lost=lambda: self.interrupt("lost"))
        p.leases.hold(self.lease)
        try:
            attempts, counted = int(reply[2]), reply[4] == "1"
            if not counted and attempts > 0 and await self._adopt_stored_result():
                return Outcome.DONE
            h = dict(zip(reply[5::2], reply[6::2], strict=True))
            outcome = await self._work(h, attempts, counted, cancelled=reply[3] == "1")
            if outcome is Outcome.HANDOFF:
                await p.scripts.release(keys=[k.lease(self.task_id)], args=[token])
            return outcome
        finally:
            p.leases.drop(self.task_id)

    async def _adopt_stored_result(self) -> bool:
        """A holder that died after writing the store but before marking Redis finished the
        task already: finish it from the row, never calling the provider again."""
        row = await self.proc.store.get_task(self.task_id)
        if row is None or row["status"] not in tasks.TERMINAL:
            return False
        view = tasks.view_from_row(row)
        log.info("adopted_stored_result", task_id=self.task_id, status=row["status"])
        return await self._complete(row["status"], view["result"], view["error"], view,
                                    int(row["completed_at"] or now_ms()))

    async def _work(self, h: dict[str, str], attempts: int, counted: bool,
                    cancelled: bool) -> Outcome:
        partial = Partial()
        if cancelled:
            return await self._finish(h, tasks.CANCELLED, partial, None, None, attempts)
        request = orjson.loads(h["request"])
        self.deadline_at = deadlines.deadline_at(request, int(h["created_at"]),
                                                 self.proc.settings.task_deadline_s)
        last_error: dict[str, Any] | None = {
            "code": "attempts_exhausted",
            "message": f"gave up after {attempts} attempts (a processor died during each)"}
        while counted or attempts < self.proc.settings.max_attempts:
            if not counted:
                attempts = await self._count_attempt()
                if attempts < 0:
                    return Outcome.LOST
            counted = False
            partial = Partial()
            try:
                done = await self._interruptible(self._call(request, partial))
                return await self._finish(h, tasks.SUCCEEDED, partial, done, None, attempts)
            except _Stop:
                return await self._stopped(h, partial, attempts)
            except DeadlineExceeded:
                return await self._finish(h, tasks.FAILED, partial, None, deadline_error(),
                                          attempts)
            except ProviderError as err:
                last_error = _error_dict(err)
                await self.proc.note_provider(error=err.message)
                if self.proc.governor.enabled and is_rate_limit(err):
                    # A wait, not a failure: the attempt does not count, and the task waits
                    # for the governor again (which the refusal just paced).
                    log.info("rate_limited", task_id=self.task_id, status=err.status)
                    await self._reset_if_streamed(partial)
                    counted = True
                    continue
                if not err.retryable:
                    break
                log.info("attempt_failed", task_id=self.task_id, attempt=attempts,
                         status=err.status, code=err.code)
                if attempts < self.proc.settings.max_attempts:
                    try:
                        await self._interruptible(asyncio.sleep(self._backoff(attempts, err)))
                    except _Stop:
                        return await self._stopped(h, partial, attempts)
        return await self._finish(h, tasks.FAILED, partial, None, last_error, attempts)

    # --- one attempt --------------------------------------------------------------------------
    async def _call(self, request: dict[str, Any], partial: Partial) -> provider.Completion:
        p, k, lease = self.proc, self.proc.keys, self.lease
        assert lease is not None

        async def on_deltas(deltas: list[Delta]) -> None:
            partial.add(deltas)
            args: list[str] = [lease.token]
            for d in deltas:
                args += [d.kind, orjson.dumps({"delta": d.text}).decode()]
            if not await p.scripts.emit(keys=[k.lease(self.task_id), k.events(self.task_id)],
                                        args=args):
                lease.mark_lost()

        async with p.governor.call(self.task_id, request, self.deadline_at) as call:
            completion = await provider.complete(p.http, p.settings.provider, request, on_deltas,
                                                 on_headers=call.observe)
            call.used(completion.usage)
        await p.note_provider(streamed=completion.streamed)
        return completion

    async def _reset_if_streamed(self, partial: Partial) -> None:
        """Tell clients to drop what a refused call streamed: the answer starts again. A lost
        lease is marked, so the next step stops."""
        lease = self.lease
        if lease is None or partial.first_token_at is None:
            return
        k = self.proc.keys
        if not await self.proc.scripts.emit(
                keys=[k.lease(self.task_id), k.events(self.task_id)],
                args=[lease.token, "reset", '{"rate_limited":true}']):
            lease.mark_lost()

    def interrupt(self, reason: str) -> None:
        """Stop the current attempt: 'cancel' (the client asked), 'lost' (our lease is gone) or
        'handoff' (we are draining). The first reason given wins."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._cancel_job()

    def _cancel_job(self) -> None:
        job = self._job
        if job is not None and not job.done():
            job.cancel()  # closes the upstream connection: httpx's stream context exits
            # On Python 3.11 a cancel that lands while redis-py is sending a command can be
            # swallowed: look again shortly, until the job has really ended.
            asyncio.get_running_loop().call_later(0.05, self._cancel_job)

    async def _interruptible(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` unless, or until, the run is interrupted (then raise _Stop)."""
        if self.stop_reason is not None:
            work.close()
            raise _Stop
        job = asyncio.ensure_future(work)
        self._job = job
        try:
            return await job
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.stop_reason is None or (current is not None and current.cancelling()):
                raise  # we are being cancelled ourselves, not just the job
            raise _Stop from None
        except ProviderError:
            if self.stop_reason is not None:
                raise _Stop from None
            raise
        finally:
            self._job = None

    async def _stopped(self, h: dict[str, str], partial: Partial, attempts: int) -> Outcome:
        assert self.lease is not None
        if self.stop_reason == "lost":
            return Outcome.LOST
        if self.stop_reason == "cancel":
            return await self._finish(h, tasks.CANCELLED, partial, None, None, attempts)
        return Outcome.HANDOFF

    async def _count_attempt(self) -> int:
        k, lease = self.proc.keys, self.lease
        assert lease is not None
        n = await self.proc.scripts.attempt(
            keys=[k.task(self.task_id), k.lease(self.task_id), k.events(self.task_id)],
            args=[lease.token])
        return int(n)

    def _backoff(self, attempt: int, err: ProviderError) -> float:
        s = self.proc.settings
        if err.retry_after is not None:
            return min(err.retry_after, max(s.retry_cap_s, err.retry_after))
        return min(s.retry_cap_s, s.retry_base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    # --- the end ------------------------------------------------------------------------------
    async def _finish(self, h: dict[str, str], status: str, partial: Partial,
                      done: provider.Completion | None, error: dict[str, Any] | None,
                      attempts: int) -> Outcome:
        p, lease = self.proc, self.lease
        assert lease is not None
        content = done.result.content if done else "".join(partial.content)
        reasoning = done.result.reasoning if done else "".join(partial.reasoning)
        refusal = done.result.refusal if done else "".join(partial.refusal)
        finish = done.result.finish_reason if done else None
        usage = _usage_dict(done.usage if done else None)
        if status == tasks.CANCELLED:
            error = {"code": "cancelled", "message": "cancelled by the client"}
        completed = now_ms()
        row = TaskRow(
            id=self.task_id, tenant=h.get("tenant", ""), status=status, model=h.get("model"),
            request=h["request"], content=content, reasoning_content=reasoning,
            finish_reason=finish, prompt_tokens=usage["prompt_tokens"] if usage else None,
            completion_tokens=usage["completion_tokens"] if usage else None,
            total_tokens=usage["total_tokens"] if usage else None, attempts=attempts,
            error=orjson.dumps(error).decode() if error else None,
            batch_id=h.get("batch_id") or self.batch_id, processor=p.name, fence=lease.fence,
            created_at=int(h["created_at"]), started_at=int(h.get("started_at") or completed),
            completed_at=completed)
        if not await self._still_ours():
            log.warning("lease_lost_before_write", task_id=self.task_id, fence=lease.fence)
            return Outcome.LOST
        if not await p.store.save_task(row):
            log.warning("stale_write_refused", task_id=self.task_id, fence=lease.fence)
            return Outcome.LOST
        result = None
        if status == tasks.SUCCEEDED or content or reasoning:
            result = tasks.result_dict(content, reasoning, finish, usage)
            if refusal:
                result["refusal"] = refusal
        view = {**tasks.view_from_redis(h), "status": status, "attempts": attempts,
                "result": result, "error": error, "completed_at": iso(completed),
                "started_at": iso(row.started_at), "batch_id": row.batch_id}
        if not await self._complete(status, result, error, view, completed):
            return Outcome.LOST
        self._log_summary(status, attempts, partial, usage)
        return Outcome.DONE

    async def _still_ours(self) -> bool:
        """Whether our lease still holds, asking Redis only when time alone cannot tell."""
        p, lease = self.proc, self.lease
        assert lease is not None
        ttl = p.settings.batching.lock_ttl_ms
        if lease.surely_held(ttl):
            return True
        sent = time.monotonic()
        if await p.scripts.renew(keys=[p.keys.lease(self.task_id)], args=[lease.token, ttl]):
            lease.renewed_at = sent
            return True
        lease.mark_lost()
        return False

    async def _complete(self, status: str, result: dict[str, Any] | None,
                        error: dict[str, Any] | None, view: dict[str, Any],
                        completed: int) -> bool:
        p, k, lease = self.proc, self.proc.keys, self.lease
        assert lease is not None
        ok = await p.scripts.complete(
            keys=[k.task(self.task_id), k.lease(self.task_id), k.events(self.task_id),
                  k.dead_letters, k.stats],
            args=[lease.token, status, orjson.dumps(result) if result else "",
                  orjson.dumps(error) if error else "", completed, p.settings.retention_s,
                  tasks.TERMINAL_EVENT[status], orjson.dumps(view), self.task_id,
                  k.tenant_active("")])
        return bool(ok)

    async def _ensure_row_for_terminal(self) -> None:
        """A task cancelled before it ran (or finished by a holder that died before acking):
        make sure its one row exists, without replacing a row that does."""
        p = self.proc
        h = await hash_of(p.redis, p.keys.task(self.task_id))
        if not h or await p.store.get_task(self.task_id) is not None:
            return
        result = tasks.loads_or_none(h.get("result")) or {}
        usage = result.get("usage") or {}
        await p.store.save_task_if_absent(TaskRow(
            id=self.task_id, tenant=h.get("tenant", ""), status=h["status"],
            model=h.get("model"), request=h["request"], content=result.get("content"),
            reasoning_content=result.get("reasoning_content"),
            finish_reason=result.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            total_tokens=usage.get("total_tokens"), attempts=int(h.get("attempts") or 0),
            error=h.get("error") or None, batch_id=h.get("batch_id") or self.batch_id,
            processor=p.name, fence=int(h.get("fence") or 0), created_at=int(h["created_at"]),
            started_at=int(h["started_at"]) if h.get("started_at") else None,
            completed_at=int(h.get("completed_at") or now_ms())))
        if h["status"] == tasks.CANCELLED:
            await p.redis.expire(p.keys.task(self.task_id), p.settings.retention_s)
            await p.redis.expire(p.keys.events(self.task_id), p.settings.retention_s)

    def _log_summary(self, status: str, attempts: int, partial: Partial,
                     usage: dict[str, int] | None) -> None:
        ttft = (None if partial.first_token_at is None
                else round((partial.first_token_at - self.started) * 1000, 1))
        log.info("task", task_id=self.task_id, batch_id=self.batch_id, status=status,
                 attempts=attempts, ms=round((time.perf_counter() - self.started) * 1000, 1),
                 first_token_ms=ttft,
                 completion_tokens=usage["completion_tokens"] if usage else None)


def _usage_dict(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def _error_dict(err: ProviderError) -> dict[str, Any]:
    return {"code": err.code or (f"http_{err.status}" if err.status else "provider_error"),
            "message": err.message, "status": err.status}

"""One task on one processor: lease, attempts, live deltas, store row, terminal state.

Order of the final steps matters: the row goes to the store first (with our fence), then the
task turns terminal in Redis, then the batch entry is acknowledged: by the batch's last task in
the same step when every other task of the batch has finished, else by the caller. A crash
between any two steps leaves the task to be reclaimed, and the fenced, idempotent store write
makes running those steps again harmless.

An answer, once the provider has given it, is not thrown away for an outage: deltas that Redis
could not take wait (clients get a ``reset`` and the text so far when it is back), and each
finishing step waits for Redis or the store on its own, with the answer in memory.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

import orjson

from services.processor import routing, telemetry
from services.processor.ai_status import ProviderStatus
from services.processor.assembler import ChoiceText, Delta, ProviderError
from services.processor.deadlines import deadline_error
from services.processor.governor import Call, DeadlineExceeded, Governor, is_rate_limit
from services.processor.leases import Lease, LeaseKeeper
from services.processor.provider import Completion
from services.processor.results import answer_extras, counted_usage, usage_dict
from shared import deadlines, jsonbytes, logs, metrics, tasks
from shared.loops import until_redis_answers
from shared.redis_conn import WAIT_OUT
from shared.steps import (
    AlreadyTerminal,
    AttemptCounted,
    Begun,
    HeldElsewhere,
    LeaseLost,
    Missing,
    Steps,
)
from shared.store import Store, TaskRow, store_unavailable
from shared.timeutil import now_ms

log = logs.get("sluice.processor")
T = TypeVar("T")


class Outcome(Enum):
    """How a run ended, and why an attempt was stopped: one vocabulary for both."""
    DONE = "done"          # we made the task terminal (row stored, Redis marked)
    ADOPTED = "adopted"    # finished from a row a dead holder had stored
    TERMINAL = "terminal"  # it was terminal already (cancelled before it ran, or finished)
    MISSING = "missing"    # Redis no longer knows the task
    BUSY = "busy"          # another live processor holds the lease
    LOST = "lost"          # our lease was lost midway: the new holder finishes it
    HANDOFF = "handoff"    # we are draining: handed back unfinished
    CANCEL = "cancel"      # the client asked: stop the attempt, end the task cancelled
    CRASHED = "crashed"    # its runs kept raising: left to be reclaimed (see worker._crashed)
    REQUEUED = "requeued"  # rate-limited: back to waiting in the queue, not in a processor


# The batch no longer owns these tasks: its entry may be acknowledged.
FINISHED = frozenset({Outcome.DONE, Outcome.ADOPTED, Outcome.TERMINAL, Outcome.MISSING,
                      Outcome.REQUEUED})
STOPS = frozenset({Outcome.CANCEL, Outcome.LOST, Outcome.HANDOFF})


class _Stop(Exception):
    """The attempt was interrupted on purpose (cancel, lease lost, drain)."""


@dataclass(frozen=True, slots=True)
class RunPolicy:
    max_attempts: int
    retry_base_s: float
    retry_cap_s: float
    retry_after_cap_s: float
    lock_ttl_ms: int
    retention_s: int
    # How long Redis keeps a store:false response once it ended: time for the edge following
    # it to read its end (that edge then forgets it at once); the bound when no edge does.
    unstored_retention_s: int
    task_deadline_s: float


@dataclass(frozen=True, slots=True)
class RunDeps:
    """What a task run uses, and nothing more."""
    steps: Steps
    store: Store
    call: routing.CallRoute
    leases: LeaseKeeper
    status: ProviderStatus
    policy: RunPolicy
    processor: str
    governor: Governor
    router: routing.Router


@dataclass(slots=True)
class BatchEntry:
    """The batches-stream entry a batch's tasks came in, shared by their runs."""
    entry_id: str
    size: int
    finished: int = 0  # tasks whose runs ended FINISHED
    acked: bool = False  # acknowledged by the last task's complete.lua

    def ack_with_last(self) -> str:
        """The entry id, for the one task still running once all the others finished: its
        complete.lua acknowledges the entry ('' while others run or one did not finish)."""
        return self.entry_id if self.finished == self.size - 1 else ""


_KINDS = ("reasoning", "content", "refusal")  # the order a reset resends them in
_SLOT = {kind: n for n, kind in enumerate(_KINDS)}


@dataclass(slots=True)
class Partial:
    """What this attempt has handed on. The text itself is ``answer``, which the provider call
    fills with choice 0's text as it parses it: an answer in flight is held once, not by the
    assembler and again here. ``sent`` counts the characters handed on, by kind: a read that
    fails midway has put text in ``answer`` that no client saw, and that is no part of what
    the attempt stores or resends."""
    answer: ChoiceText = field(default_factory=ChoiceText)
    sent: list[int] = field(default_factory=lambda: [0] * len(_KINDS))
    first_token_at: float | None = None
    # The choice deltas handed on (tool calls, logprobs, other choices), each as its event's
    # data: a resync after a failed append resends them as they were.
    extras: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """No delta of this attempt yet."""
        return self.first_token_at is None

    def add(self, deltas: list[Delta]) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        sent = self.sent
        for d in deltas:
            if d.kind == "choice":
                self.extras.append(d.text)
            else:
                sent[_SLOT[d.kind]] += len(d.text)

    def text(self, kind: str) -> str:
        """The text of ``kind`` handed on so far."""
        whole, n = getattr(self.answer, kind).value(), self.sent[_SLOT[kind]]
        return whole if len(whole) == n else whole[:n]


class TaskRun:
    # One per task in flight: slots, not a __dict__ (~200 B less each).
    __slots__ = ("_job", "_resync", "_unsent", "attempts", "batch_id", "deadline_at", "deps",
                 "entry", "error", "lease", "partial", "request", "routes", "started", "status",
                 "stop_reason", "task_id", "token", "usage")

    def __init__(self, deps: RunDeps, task_id: str, batch_id: str,
                 entry: BatchEntry | None = None) -> None:
        self.deps, self.task_id, self.batch_id, self.entry = deps, task_id, batch_id, entry
        self.stop_reason: Outcome | None = None
        self._job: asyncio.Future[Any] | None = None
        self.token = secrets.token_hex(16)  # kept across Redis reconnects: begin is re-entrant
        self.lease: Lease | None = None
        self.started = time.perf_counter()
        # For the one summary line per run, whatever its outcome.
        self.status: str | None = None
        self.attempts = 0
        self.partial = Partial()
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None  # the error the task finished with
        self._unsent: list[tuple[str, str]] = []  # deltas Redis has not taken yet
        self._resync = False  # an emit failed midway: resend all we have, after a reset
        self.deadline_at: int | None = None
        self.request: dict[str, Any] | None = None  # parsed once, for the call and the view
        self.routes = routing.TaskRoutes()  # where its calls went, and where the next goes

    # --- entry point --------------------------------------------------------------------------
    # The calls from here to the provider's read are the frames every answer in flight holds
    # (~250 B each): begin is its own call, done before the answer starts, not a level more.
    async def run(self) -> Outcome:
        outcome: Outcome | None = None
        try:
            begun = await self._begin()
            outcome = begun if isinstance(begun, Outcome) else await self._owned(begun)
            return outcome
        finally:
            self._log_summary(outcome)

    async def _begin(self) -> Begun | Outcome:
        """Take the task's lease, or say why this run ends without it."""
        d = self.deps
        begun = await d.steps.begin(task_id=self.task_id, token=self.token,
                                    ttl_ms=d.policy.lock_ttl_ms, now=now_ms(),
                                    processor=d.processor)
        if isinstance(begun, Missing):
            log.warning("task_missing", task_id=self.task_id)
            return Outcome.MISSING
        if isinstance(begun, AlreadyTerminal):
            self.status = begun.status
            await self.ensure_row_for_terminal()
            return Outcome.TERMINAL
        if isinstance(begun, HeldElsewhere):
            return Outcome.BUSY
        return begun

    async def _owned(self, begun: Begun) -> Outcome:
        d = self.deps
        self.lease = Lease(self.task_id, self.token, begun.fence,
                           on_lost=lambda: self.interrupt(Outcome.LOST))
        d.leases.hold(self.lease)
        try:
            telemetry.begun(begun)
            self.attempts = begun.attempts
            if not begun.counted and begun.attempts > 0 and await self._adopt_stored_result():
                return Outcome.ADOPTED
            outcome = await self._work(begun.task, begun.attempts, begun.counted,
                                       cancelled=begun.cancel_requested)
            if outcome is Outcome.HANDOFF:
                await d.steps.release_lease(self.task_id, self.token)
            return outcome
        finally:
            d.leases.drop(self.task_id)

    async def _adopt_stored_result(self) -> bool:
        """A holder that died after writing the store but before marking Redis finished the
        task already: finish it from the row, never calling the provider again."""
        row = await self.deps.store.get_task(self.task_id)
        if row is None or row["status"] not in tasks.TERMINAL:
            return False
        view = tasks.view_from_row(row)
        self.status = row["status"]
        # The dead holder sent the answer's last deltas with complete.lua, which never ran:
        # clients get a reset and the stored text, so the stream ends as the row does.
        self._unsent = [(tasks.EV_RESET, orjson.dumps({"attempt": self.attempts}).decode())]
        self._unsent += [(kind, orjson.dumps({"delta": text}).decode())
                         for kind, text in (("reasoning", row.get("reasoning_content")),
                                            ("content", row.get("content"))) if text]
        return await self._complete(row["status"], view["result"], view["error"], view,
                                    int(row["completed_at"] or now_ms()))

    async def _work(self, h: dict[str, str], attempts: int, counted: bool,
                    cancelled: bool) -> Outcome:
        policy = self.deps.policy
        if cancelled:
            return await self._finish(h, tasks.CANCELLED, None, None, attempts)
        request = self.request = orjson.loads(h["request"])
        self.deadline_at = deadlines.deadline_at(request, int(h["created_at"]),
                                                 policy.task_deadline_s)
        last_error: dict[str, Any] | None = {
            "code": "attempts_exhausted",
            "message": f"gave up after {attempts} attempts (a processor died during each)"}
        while counted or attempts < policy.max_attempts:
            if not counted:
                counted_now = await self._count_attempt()
                if counted_now is None:
                    return Outcome.LOST
                attempts = self.attempts = counted_now
            counted = False
            self.partial, self._unsent, self._resync = Partial(), [], False
            try:
                done = await self._interruptible(self._call(request))
                return await self._finish(h, tasks.SUCCEEDED, done, None, attempts)
            except _Stop:
                return await self._stopped(h, attempts)
            except DeadlineExceeded:
                return await self._finish(h, tasks.FAILED, None, deadline_error(), attempts)
            except ProviderError as err:
                last_error = _error_dict(err)
                await self.deps.status.note(error=err.message, tenant=h.get("tenant", ""))
                if self.deps.governor.enabled and is_rate_limit(err):
                    # A wait, not a failure: the attempt does not count, and the task waits in
                    # the queue (not here, holding a slot) until the governor, which the
                    # refusal just paced, has room; it keeps its place in its tenant's line.
                    log.info("rate_limited", task_id=self.task_id, status=err.status)
                    return await self._requeue()
                # Another route may not share the failure: the next attempt goes there at once.
                moved = self.routes.move_on(err)
                if not err.retryable and not moved:
                    break
                log.info("attempt_failed", task_id=self.task_id, attempt=attempts,
                         status=err.status, code=err.code, provider=self.routes.last_provider,
                         next_route=moved)
                if attempts < policy.max_attempts and not moved:
                    try:
                        await self._interruptible(asyncio.sleep(self.backoff(attempts, err)))
                    except _Stop:
                        return await self._stopped(h, attempts)
        return await self._finish(h, tasks.FAILED, None, last_error, attempts)

    # --- one attempt --------------------------------------------------------------------------
    async def _call(self, request: dict[str, Any]) -> Completion:
        partial = self.partial

        async def on_deltas(deltas: list[Delta], last: bool) -> None:
            # An answer that came whole in one read goes with complete.lua, in order, before
            # the end event: one round trip less. The last piece of a streamed answer goes at
            # once: held for complete.lua it waited for the store write, and a watching
            # client saw the answer's end late (the relay bench's p99).
            hold = last and partial.empty
            partial.add(deltas)
            self._unsent += [(d.kind, d.text if d.kind == "choice"
                              else orjson.dumps({"delta": d.text}).decode()) for d in deltas]
            if not hold:
                await self._send_events()

        targets = self.routes.choose(self.deps.router, request)
        async with self.deps.governor.call(self.task_id, request, self.deadline_at,
                                           targets) as call:
            began = now_ms()
            try:
                completion = await self.deps.call(call, request, on_deltas, partial.answer)
            except BaseException as exc:
                await self._tried(call, began, exc)
                raise
            await self._tried(call, began, None)
            # A provider that reports no usage (llama.cpp's server): the governor counts what
            # it saw, and the result says null, not 0.
            call.used(completion.usage or counted_usage(request, completion))
        await self.deps.status.note(streamed=completion.streamed)
        return completion

    async def _tried(self, call: Call, began: int, exc: BaseException | None) -> None:
        """Note the call (provider, route model, processor, times, status, error); one that
        failed goes to the task's hash at once, for whoever runs the task next."""
        entry = self.routes.tried(call.target, self.deps.processor, began, now_ms(), exc)
        if exc is None or self.lease is None or isinstance(exc, asyncio.CancelledError):
            return
        try:
            await self.deps.steps.note_try(self.task_id, self.lease.token, jsonbytes.dumps(entry))
        except WAIT_OUT:
            pass  # a note: the task goes on without it
        else:
            self.routes.noted = True

    async def _send_events(self, *, wait: bool = False) -> None:
        """Append the deltas Redis has not taken yet. While Redis is unreachable the answer
        goes on streaming and they wait (``wait``: raise instead, to be retried). A failed
        append may still have run, so what follows one is a ``reset`` and the whole text so
        far: clients never see a delta twice."""
        lease = self.lease
        assert lease is not None
        if self._resync:
            p = self.partial
            events = [(tasks.EV_RESET, orjson.dumps({"attempt": self.attempts}).decode())]
            events += [(kind, orjson.dumps({"delta": text}).decode())
                       for kind in _KINDS if (text := p.text(kind))]
            events += [("choice", extra) for extra in p.extras]
        else:
            events = self._unsent
        if not events:
            return
        try:
            sent = await self.deps.steps.emit(self.task_id, lease.token, events)
        except WAIT_OUT:
            self._resync = True
            if wait:
                raise
            return
        except asyncio.CancelledError:  # interrupted: it may yet run, so it counts as failed
            self._resync = True
            raise
        self._unsent, self._resync = [], False
        if isinstance(sent, LeaseLost):
            lease.mark_lost()

    async def _requeue(self) -> Outcome:
        """Back to the queue, telling clients to drop what the refused call streamed."""
        lease = self.lease
        assert lease is not None
        streamed = self.partial.first_token_at is not None
        held = await self.deps.steps.requeue(self.task_id, lease.token, streamed=streamed)
        if isinstance(held, LeaseLost):
            lease.mark_lost()
            return Outcome.LOST
        self.status = tasks.QUEUED
        return Outcome.REQUEUED

    def interrupt(self, reason: Outcome) -> None:
        """Stop the current attempt: CANCEL (the client asked), LOST (our lease is gone) or
        HANDOFF (we are draining). The first reason given wins."""
        assert reason in STOPS
        if self.stop_reason is None:
            self.stop_reason = reason
        self._cancel_job()

    def _cancel_job(self) -> None:
        job = self._job
        if job is not None and not job.done():
            job.cancel()  # closes the upstream connection: the response's context exits
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

    async def _stopped(self, h: dict[str, str], attempts: int) -> Outcome:
        if self.stop_reason is Outcome.CANCEL:
            return await self._finish(h, tasks.CANCELLED, None, None, attempts)
        assert self.stop_reason in (Outcome.LOST, Outcome.HANDOFF)
        return self.stop_reason

    async def _count_attempt(self) -> int | None:
        """The number of the attempt now starting, or None when our lease is gone."""
        assert self.lease is not None
        counted = await self.deps.steps.count_attempt(self.task_id, self.lease.token)
        return counted.number if isinstance(counted, AttemptCounted) else None

    def backoff(self, attempt: int, err: ProviderError) -> float:
        """Seconds to wait before the next attempt: the provider's Retry-After when it sent
        one, capped by RETRY_AFTER_CAP_S (a provider asking for a day must not park a slot and
        its lease renewals for a day), else exponential backoff with jitter."""
        policy = self.deps.policy
        if err.retry_after is not None:
            return max(0.0, min(err.retry_after, policy.retry_after_cap_s))
        return (min(policy.retry_cap_s, policy.retry_base_s * 2 ** (attempt - 1))
                * random.uniform(0.5, 1.0))

    # --- the end ------------------------------------------------------------------------------
    async def _finish(self, h: dict[str, str], status: str, done: Completion | None,
                      error: dict[str, Any] | None, attempts: int) -> Outcome:
        lease, partial = self.lease, self.partial
        assert lease is not None
        content = done.result.content if done else partial.text("content")
        reasoning = done.result.reasoning if done else partial.text("reasoning")
        refusal = done.result.refusal if done else partial.text("refusal")
        finish = done.result.finish_reason if done else None
        usage = self.usage = usage_dict(done.usage if done else None)
        extras = answer_extras(done, usage) if done else {}
        if refusal:
            extras["refusal"] = refusal
        if status == tasks.CANCELLED:
            error = dict(tasks.CANCELLED_ERROR)
        self.error = error
        if not await until_redis_answers(self._still_ours, "finish", task_id=self.task_id):
            log.warning("lease_lost_before_write", task_id=self.task_id, fence=lease.fence)
            return Outcome.LOST
        completed = now_ms()
        tries = await self._all_tries(h)
        tries_json = jsonbytes.dumps(tries) if tries else b""  # the row's and complete.lua's
        answered = self.routes.answered if done else None
        row = TaskRow(
            id=self.task_id, tenant=h.get("tenant", ""), status=status, model=h.get("model"),
            request=h["request"], content=content, reasoning_content=reasoning,
            finish_reason=finish, prompt_tokens=usage["prompt_tokens"] if usage else None,
            completion_tokens=usage["completion_tokens"] if usage else None,
            total_tokens=usage["total_tokens"] if usage else None, attempts=attempts,
            error=orjson.dumps(error).decode() if error else None,
            batch_id=h.get("batch_id") or self.batch_id, processor=self.deps.processor,
            fence=lease.fence, created_at=int(h["created_at"]),
            started_at=int(h.get("started_at") or completed), completed_at=completed,
            provider=answered.name if answered else None,
            provider_model=answered.route.model if answered else None,
            tries=tries_json.decode() if tries_json else None,
            result_extra=orjson.dumps(extras).decode() if extras else None)
        unstored = tasks.unstored(self.request if self.request is not None
                                  else orjson.loads(h["request"]))
        saved = await self._save(row, h, unstored=unstored)
        if not saved:
            log.warning("stale_write_refused" if saved is False else "lease_lost_before_write",
                        task_id=self.task_id, fence=lease.fence)
            if saved is False:
                metrics.fence_rejections.inc()
            return Outcome.LOST
        if self._resync:  # an emit failed midway: the reset and the text so far, first
            await until_redis_answers(lambda: self._send_events(wait=True), "emit",
                                      task_id=self.task_id)
        result = None
        if status == tasks.SUCCEEDED or content or reasoning:
            result = tasks.result_dict(content, reasoning, finish, usage)
            result.update(extras)
            routing.answered_by(result, self.routes.answered)
        view = tasks.terminal_view(h, status=status, attempts=attempts, result=result,
                                   error=error, started_at=row.started_at or completed,
                                   completed_at=completed, batch_id=row.batch_id,
                                   request=self.request, tries=tries)
        policy = self.deps.policy
        if not await self._complete(status, result, error, view, completed, tries_json,
                                    retention_s=policy.unstored_retention_s if unstored
                                    else policy.retention_s):
            return Outcome.LOST
        self.status = status
        return Outcome.DONE

    async def _all_tries(self, h: dict[str, str]) -> list[dict[str, Any]]:
        """Every provider call of the task: those noted in its hash (earlier runs', and this
        one's failures) and this run's last. Read only when there may be earlier ones."""
        earlier: list[dict[str, Any]] = []
        if self.routes.noted or self.attempts > 1 or h.get("requeues"):
            steps = self.deps.steps
            raw = await until_redis_answers(
                lambda: steps.redis.hget(steps.keys.task(self.task_id), "tries"),  # type: ignore[arg-type, return-value]
                "tries", task_id=self.task_id)
            earlier = orjson.loads(raw) if raw else []
        return routing.merge_tries(earlier, self.routes.log)

    async def _save(self, row: TaskRow, h: dict[str, str], *, unstored: bool) -> bool | None:
        """Store the row (and the task's Idempotency-Key, should the edge have failed to),
        waiting out a store that cannot take writes now (disk full, an I/O error) while our
        lease holds: the answer is kept, not generated again. False: a row with a higher
        fence is there; None: our lease was lost while we waited.

        ``unstored`` (a ``store: false`` response): its tombstone instead, the row a DELETE
        leaves (:meth:`~shared.store.Store.forget_task`), so the store never holds its request
        or answer, and the one final row is there even if no edge ever forgets it. The
        tombstone's fence is the highest: a later holder (this one died before complete.lua)
        writes the same tombstone again, and no row of any holder replaces it."""
        delay = 0.5
        while True:
            try:
                if unstored:
                    return await self.deps.store.forget_task(
                        self.task_id, h.get("tenant", ""), tasks.DELETED, row.completed_at or 0)
                await self._save_idempotency_key(h)
                return await self.deps.store.save_task(row)
            except Exception as exc:
                if not store_unavailable(exc):
                    raise
                log.warning("store_write_failed", task_id=self.task_id, error=str(exc),
                            retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            if not await until_redis_answers(self._still_ours, "finish", task_id=self.task_id):
                return None
            row.fence = self.lease.fence if self.lease else row.fence

    async def _save_idempotency_key(self, h: dict[str, str]) -> None:
        if h.get("idem_key"):
            await self.deps.store.save_idempotency_key(h.get("tenant", ""), h["idem_key"],
                                                       self.task_id, h.get("idem_hash", ""))

    async def _still_ours(self) -> bool:
        """Whether our lease still holds, asking Redis only when time alone cannot tell."""
        lease, ttl = self.lease, self.deps.policy.lock_ttl_ms
        assert lease is not None
        if lease.surely_held(ttl):
            return True
        sent = time.monotonic()
        if isinstance(await self.deps.steps.renew(self.task_id, lease.token, ttl), LeaseLost):
            return await self._take_back(sent)
        lease.renewed_at = sent
        return True

    async def _take_back(self, sent: float) -> bool:
        """Our lease ran out (a Redis outage longer than it) with the answer in hand: take the
        task again under the same token (``begin`` is re-entrant) unless someone else holds
        or finished it. The new fence outranks every earlier holder's row."""
        lease, d = self.lease, self.deps
        assert lease is not None
        begun = await d.steps.begin(task_id=self.task_id, token=lease.token,
                                    ttl_ms=d.policy.lock_ttl_ms, now=now_ms(),
                                    processor=d.processor)
        if not isinstance(begun, Begun):
            lease.mark_lost()
            return False
        log.info("lease_taken_back", task_id=self.task_id, fence=begun.fence)
        lease.fence, lease.lost, lease.renewed_at = begun.fence, False, sent
        return True

    async def _complete(self, status: str, result: dict[str, Any] | None,
                        error: dict[str, Any] | None, view: dict[str, Any],
                        completed: int, tries_json: bytes = b"",
                        retention_s: int | None = None) -> bool:
        lease = self.lease
        assert lease is not None
        # Deltas not sent yet (the answer's last piece) go first, in the same step.
        unsent, self._unsent = self._unsent, []
        entry = self.entry
        ack = entry.ack_with_last() if entry is not None else ""
        done = await until_redis_answers(lambda: self.deps.steps.complete(
            task_id=self.task_id, token=lease.token, status=status,
            result_json=jsonbytes.dumps(result) if result else "",
            error_json=jsonbytes.dumps(error) if error else "", now=completed,
            retention_s=retention_s or self.deps.policy.retention_s,
            view_json=jsonbytes.dumps(view),
            events=unsent, ack_entry=ack, tries_json=tries_json),
            "complete", task_id=self.task_id)
        if isinstance(done, LeaseLost):
            return False
        lease.done = True  # the lease ended with the task: a renewal now finds it gone
        if entry is not None and ack:
            entry.acked = True
        return True

    async def ensure_row_for_terminal(self) -> None:
        """A task cancelled before it ran (or finished by a holder that died before acking):
        make sure its one row exists, without replacing a row that does."""
        d = self.deps
        h = await d.steps.task_hash(self.task_id)
        if h and tasks.unstored(orjson.loads(h["request"])):
            # store:false: its tombstone, never its row; Redis lets it go soon (the edge
            # answering it forgets it at once).
            await d.store.forget_task(self.task_id, h.get("tenant", ""), tasks.DELETED,
                                      int(h.get("completed_at") or now_ms()))
            await d.steps.keep_for(self.task_id, d.policy.unstored_retention_s)
            return
        if not h or await d.store.get_task(self.task_id) is not None:
            return
        await self._save_idempotency_key(h)
        result = tasks.loads_or_none(h.get("result")) or {}
        usage = result.get("usage") or {}
        await d.store.save_task_if_absent(TaskRow(
            id=self.task_id, tenant=h.get("tenant", ""), status=h["status"],
            model=h.get("model"), request=h["request"], content=result.get("content"),
            reasoning_content=result.get("reasoning_content"),
            finish_reason=result.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            total_tokens=usage.get("total_tokens"), attempts=int(h.get("attempts") or 0),
            error=h.get("error") or None, batch_id=h.get("batch_id") or self.batch_id,
            processor=d.processor, fence=int(h.get("fence") or 0),
            created_at=int(h["created_at"]),
            started_at=int(h["started_at"]) if h.get("started_at") else None,
            completed_at=int(h.get("completed_at") or now_ms()),
            result_extra=tasks.stored_extras(result)))
        if h["status"] == tasks.CANCELLED:
            await d.steps.keep_for(self.task_id, d.policy.retention_s)

    def _log_summary(self, outcome: Outcome | None) -> None:
        """The one ``task`` line of this run, whatever its outcome (None: it raised)."""
        partial = self.partial
        ttft = (None if partial.first_token_at is None
                else round((partial.first_token_at - self.started) * 1000, 1))
        error = self.error if self.status in tasks.TERMINAL else None
        # A failure is a warning, and says why (the message is the provider's or ours, cut
        # short: it may quote the request).
        failed = outcome is None or self.status == tasks.FAILED
        (log.warning if failed else log.info)(
            "task", task_id=self.task_id, batch_id=self.batch_id,
            outcome=outcome.value if outcome else "error", status=self.status,
            attempts=self.attempts, ms=round((time.perf_counter() - self.started) * 1000, 1),
            first_token_ms=ttft,
            completion_tokens=self.usage["completion_tokens"] if self.usage else None,
            error_code=error.get("code") if error else None,
            error_message=str(error.get("message") or "")[:200] if error else None)


def _error_dict(err: ProviderError) -> dict[str, Any]:
    error = {"code": err.code or (f"http_{err.status}" if err.status else "provider_error"),
             "message": err.message, "status": err.status}
    if err.type is not None:  # the provider's own words, relayed to /v1 clients as given
        error["type"] = err.type
    if err.param is not None:
        error["param"] = err.param
    return error

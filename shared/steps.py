"""The Redis protocol between the services: one typed method per atomic step.

This is the only module that calls :class:`shared.scripts.Scripts`, as :mod:`shared.keys` is
the only one that spells a key. Each method states its script's KEYS and ARGV once, in its
docstring, and turns the reply into a frozen dataclass (or a small union of them), so callers
match on types instead of indexing lists. Key lists that never change are built once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from shared import tasks
from shared.coalesce import Coalescer
from shared.keys import BATCHES_GROUP, TASKS_GROUP, Keys
from shared.redis_conn import RedisClient, hash_of
from shared.scripts import Scripts

_CANCELLED_ERROR = orjson.dumps(tasks.CANCELLED_ERROR).decode()


# --- replies shared by several steps ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Missing:
    """The task is not in Redis (never was, expired, or belongs to another tenant)."""


@dataclass(frozen=True, slots=True)
class AlreadyTerminal:
    status: str


@dataclass(frozen=True, slots=True)
class LeaseLost:
    """The lease (or lock) is no longer held with our token: someone else may hold it."""


@dataclass(frozen=True, slots=True)
class Held:
    """The step ran under our lease."""


MISSING, LEASE_LOST, HELD = Missing(), LeaseLost(), Held()


# --- submit -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Created:
    id: str
    window_used: int = 0  # submissions counted in the tenant's rate window (0: no limit)


@dataclass(frozen=True, slots=True)
class Existing:
    """The same Idempotency-Key and body were accepted before, as task ``id``."""
    id: str


@dataclass(frozen=True, slots=True)
class Conflict:
    """The Idempotency-Key was used with another body, for task ``id``."""
    id: str


@dataclass(frozen=True, slots=True)
class RateLimited:
    retry_after_s: int


@dataclass(frozen=True, slots=True)
class TooManyActive:
    retry_after_s: int


SubmitResult = Created | Existing | Conflict | RateLimited | TooManyActive


@dataclass(frozen=True, slots=True)
class TenantLimits:
    rate_per_window: int  # submissions per window, 0: no limit
    window_ms: int
    max_active: int       # tasks queued or running at once, 0: no limit


# --- batching ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BatchPolicy:
    size: int
    timeout_ms: int
    adaptive: bool
    aging_ms: int = 60_000  # PRIORITY_AGING_S: how much waiting one priority step is worth


@dataclass(frozen=True, slots=True)
class BatchState:
    open_len: int      # tasks in the waiting room, not yet in a batch
    deadline_ms: int   # when the timer flushes a batch of them (0: none waits)
    flushed: int       # batches this call flushed


# --- running a task ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Begun:
    fence: int
    attempts: int
    cancel_requested: bool
    counted: bool            # this call counted attempt 1
    task: dict[str, str]     # the fields of the task hash in BEGUN_FIELDS it has


# What a holder reads of its task's hash (the runner, its telemetry and the task's row), in the
# order begin.lua returns them: only these cross from Redis, not the whole hash.
BEGUN_FIELDS = ("id", "tenant", "model", "request", "created_at", "started_at", "batch_id",
                "idem_key", "idem_hash", "requeues", "traceparent")


@dataclass(frozen=True, slots=True)
class HeldElsewhere:
    """Another holder's lease is live."""


BeginResult = Begun | AlreadyTerminal | HeldElsewhere | Missing


@dataclass(frozen=True, slots=True)
class AttemptCounted:
    number: int


# --- the edge's steps on a task ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CancelledNow:
    """It had not started: it is cancelled, and no processor will call the provider for it."""


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """It is running: flagged, and its holder told; it ends cancelled shortly."""


CancelResult = CancelledNow | CancelRequested | AlreadyTerminal | Missing


@dataclass(frozen=True, slots=True)
class StoredTask:
    """What ``retry`` needs of a task's store row to rebuild a task Redis has forgotten."""
    request: str
    model: str
    created_at: int
    fence: int


@dataclass(frozen=True, slots=True)
class Requeued:
    pass


@dataclass(frozen=True, slots=True)
class NotFailed:
    pass


RetryResult = Requeued | NotFailed | Missing


@dataclass(frozen=True, slots=True)
class Forgotten:
    """The finished task is gone from Redis: hash, events, indexes, its Idempotency-Key."""


@dataclass(frozen=True, slots=True)
class StillActive:
    """The task is queued or running: nothing was forgotten."""
    status: str


ForgetResult = Forgotten | StillActive | Missing


class Steps:
    """The atomic steps of the protocol, bound to one client and one key prefix."""

    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.redis, self.keys = redis, keys
        self._scripts = Scripts.register(redis)
        self._together: dict[str, Coalescer] = {}
        k = keys
        self._batch_keys = [k.waiting_count, k.batch_deadline, k.batches_stream, k.tasks_stream,
                            k.batch_seq, k.batch_backlog, k.processors_free,
                            k.processors_alive, k.stats, k.waiting_tenants, k.fair_state,
                            k.tenant_weights, k.processors_room, k.open_batch]
        self._capacity_keys = [k.processors_free, k.processors_alive, k.batch_backlog,
                               k.waiting_count, k.processors_inflight, k.processors_room]
        self._handoff_keys = [k.batches_stream, k.batch_backlog, k.stats]

    def _call(self, name: str, keys: list[str], args: Sequence[Any],
              client: Any = None, *, together: bool = False) -> Awaitable[Any]:
        """Run script ``name``; ``together``: coalesced with the other calls of it in flight
        from this process, one pipeline per round trip (shared/coalesce.py): the steps every
        task takes, many at once under load (an edge's submits; a processor's begin, emit,
        complete). It hands back the script's awaitable rather than awaiting it in a coroutine
        of its own: one frame less per step, held while the step is on its way."""
        script = getattr(self._scripts, name)
        if together:
            coalescer = self._together.get(name)
            if coalescer is None:
                coalescer = self._together[name] = Coalescer(self.redis, script)
            return coalescer(keys, args)
        return script(keys=keys, args=args, client=client)

    # --- edge -----------------------------------------------------------------------------
    async def submit(self, *, task_id: str, tenant: str, request_json: bytes, model: str,
                     now: int, idem_key: str | None, body_hash: str, idempotency_ttl_s: int,
                     first_event: str, task_ttl_s: int,
                     limits: TenantLimits, traceparent: str = "", priority: int = 0,
                     cost: int = 1) -> SubmitResult:
        """``submit.lua``: store a task and queue it, checking the tenant's limits.

        KEYS: task hash, task events, tasks stream, idempotency key, the tenant's counter of
        the current rate window, the tenant's active set.
        ARGV: task id, tenant, request JSON, model, now (ms), body hash ('' without an
        Idempotency-Key), idempotency TTL (s), first status event data, task TTL (s), rate per
        window, window (ms), max active, the Idempotency-Key ('' without one), traceparent
        ('' when tracing is off)."""
        k = self.keys
        window = now // limits.window_ms
        outcome, value, *rest = await self._call(
            "submit",
            [k.task(task_id), k.events(task_id), k.tasks_stream,
             k.idempotency(tenant, idem_key or ""), k.tenant_rate(tenant, window),
             k.tenant_active(tenant)],
            [task_id, tenant, request_json, model, now, body_hash if idem_key else "",
             idempotency_ttl_s, first_event, task_ttl_s, limits.rate_per_window,
             limits.window_ms, limits.max_active, idem_key or "", traceparent, priority,
             max(1, cost)], together=True)
        if outcome == "created":
            return Created(value, int(rest[0]))
        if outcome == "existing":
            return Existing(value)
        if outcome == "conflict":
            return Conflict(value)
        if outcome == "rate_limited":
            return RateLimited(int(value))
        if outcome == "too_many_active":
            return TooManyActive(int(value))
        raise _unexpected("submit", outcome)

    async def cancel(self, *, task_id: str, tenant: str, now: int) -> CancelResult:
        """``cancel.lua``: cancel a task not yet running, or flag a running one and tell its
        holder (pub/sub).

        KEYS: task hash, task events, the tenant's active set.
        ARGV: tenant, now (ms), cancel channel, task id, the error JSON of a cancelled task."""
        k = self.keys
        reply = await self._call(
            "cancel", [k.task(task_id), k.events(task_id), k.tenant_active(tenant)],
            [tenant, now, k.cancel_channel, task_id, _CANCELLED_ERROR])
        tag = reply[0]
        if tag == "now":
            return CancelledNow()
        if tag == "flagged":
            return CancelRequested()
        if tag == "terminal":
            return AlreadyTerminal(reply[1])
        if tag == "missing":
            return MISSING
        raise _unexpected("cancel", tag)

    async def retry(self, *, task_id: str, tenant: str, now: int, task_ttl_s: int,
                    stored: StoredTask | None) -> RetryResult:
        """``retry.lua``: re-queue a failed task under its id, rebuilding it from its store row
        when Redis has forgotten it.

        KEYS: task hash, task events, tasks stream, dead letters.
        ARGV: tenant, now (ms), task TTL (s), task id, request JSON ('' when Redis should know
        the task), model, created_at (ms), fence, key prefix of the tenants' active sets."""
        k = self.keys
        s = stored or StoredTask("", "", 0, 0)
        outcome = await self._call(
            "retry", [k.task(task_id), k.events(task_id), k.tasks_stream, k.dead_letters],
            [tenant, now, task_ttl_s, task_id, s.request, s.model, s.created_at, s.fence,
             k.tenant_active("")])
        if outcome == "requeued":
            return Requeued()
        if outcome == "not_failed":
            return NotFailed()
        if outcome == "missing":
            return MISSING
        raise _unexpected("retry", outcome)

    async def forget(self, *, task_id: str, tenant: str) -> ForgetResult:
        """``forget.lua``: delete a finished task from Redis for good (its hash, events, dead
        letter and deadline entries, and its Idempotency-Key while that names it).

        KEYS: task hash, task events, dead letters, deadlines.
        ARGV: tenant, task id, key prefix of the tenant's Idempotency-Keys."""
        k = self.keys
        reply = await self._call(
            "forget", [k.task(task_id), k.events(task_id), k.dead_letters, k.deadlines],
            [tenant, task_id, k.idempotency(tenant, "")])
        tag = reply[0]
        if tag == "forgotten":
            return Forgotten()
        if tag == "active":
            return StillActive(reply[1])
        if tag == "missing":
            return MISSING
        raise _unexpected("forget", tag)

    # --- coordinator ------------------------------------------------------------------------
    async def batch(self, mode: Literal["add", "timer", "idle", "flush"], *, now: int,
                    policy: BatchPolicy,
                    entries: Sequence[tuple[str, str]] = ()) -> BatchState:
        """``batch.lua``: place tasks in the fair waiting room (``add``, acknowledging their
        tasks-stream entries) and flush batches of them, in fair order: while processors and
        the provider's governor have spare room (any mode, when adaptive), when full (``add``,
        when not adaptive), one batch when the timer is due (``timer``), or all at once
        whatever the size and timer (``flush``: the end of a coordinator's burst).

        KEYS: waiting count, deadline, batches stream, tasks stream, batch sequence, backlog,
        processors' free slots, processors' heartbeats, stats, waiting tenants, fair state,
        tenant weights, processors' room, the open batch list of earlier versions.
        ARGV: mode, now (ms), batch size, timeout (ms), adaptive '1'|'0', coordinators' group,
        task key prefix, events key prefix, timer channel, processors' group, waiting line key
        prefix, aging step (ms), then pairs of (tasks stream entry id, task id)."""
        k = self.keys
        args: list[Any] = [mode, now, policy.size, policy.timeout_ms,
                           "1" if policy.adaptive else "0", TASKS_GROUP, k.task(""),
                           k.events(""), k.batch_channel, BATCHES_GROUP, k.waiting_line(""),
                           policy.aging_ms]
        for entry_id, task_id in entries:
            args += [entry_id, task_id]
        open_len, deadline, flushed = await self._call("batch", self._batch_keys, args)
        return BatchState(int(open_len), int(deadline), int(flushed))

    async def set_tenant_weights(self, weights: Mapping[str, float]) -> None:
        """Replace the tenants' share weights batch.lua reads (one key, one transaction: no
        script needed). Coordinators write theirs at start; the last one started wins."""
        async with self.redis.pipeline(transaction=True) as p:
            p.delete(self.keys.tenant_weights)
            if weights:
                p.hset(self.keys.tenant_weights,
                       mapping={tenant: str(w) for tenant, w in weights.items()})
            await p.execute()

    async def heartbeat(self, *, name: str, expiry_ms: int, forget_before_ms: int) -> list[str]:
        """``heartbeat.lua``: a coordinator's heartbeat; drops coordinators' expired before
        ``forget_before_ms``. Returns the processors whose heartbeat expired before it.

        KEYS: coordinators' heartbeats, processors' heartbeats.
        ARGV: coordinator name, its heartbeat expiry (ms), forget expiries before (ms)."""
        k = self.keys
        gone = await self._call("heartbeat", [k.coordinators_alive, k.processors_alive],
                                [name, expiry_ms, forget_before_ms])
        return [str(g) for g in gone]

    async def hand_on_traces(self, traceparents: Mapping[str, str]) -> int:
        """``trace.lua`` for each task (task id -> the coordinator's span), in one pipeline:
        set its ``traceparent`` if it still exists. Returns how many were set.

        KEYS: task hash. ARGV: traceparent."""
        if not traceparents:
            return 0
        async with self.redis.pipeline(transaction=False) as p:
            for task_id, parent in traceparents.items():
                await self._call("trace", [self.keys.task(task_id)], [parent], client=p)
            results = await p.execute()
        return sum(int(r) for r in results)

    async def release_lock(self, key: str, token: str) -> Held | LeaseLost:
        """``release.lua`` on a lock: compare-and-delete. KEYS: the lock. ARGV: token."""
        return HELD if await self._call("release", [key], [token]) else LEASE_LOST

    async def renew_lock(self, key: str, token: str, ttl_ms: int) -> Held | LeaseLost:
        """``renew.lua`` on a lock: compare-and-expire. KEYS: the lock. ARGV: token, TTL."""
        return HELD if await self._call("renew", [key], [token, ttl_ms]) else LEASE_LOST

    # --- processor --------------------------------------------------------------------------
    async def report_capacity(self, *, name: str, free: int, expiry_ms: int, taken: int,
                              inflight: int, room: int) -> int:
        """``capacity.lua``: a processor's free slots, the provider room its governor sees,
        and its heartbeat; wakes the coordinators when it has room and tasks wait. Returns
        the number of tasks in the waiting room.

        KEYS: free slots hash, heartbeats, backlog, waiting count, in-flight hash, room hash.
        ARGV: processor name, free slots, heartbeat expiry (ms), tasks taken off the backlog,
        channel, tasks in flight, provider room."""
        waiting = await self._call(
            "capacity", self._capacity_keys,
            [name, free, expiry_ms, taken, self.keys.batch_channel, inflight, room])
        return int(waiting)

    async def begin(self, *, task_id: str, token: str, ttl_ms: int, now: int,
                    processor: str) -> BeginResult:
        """``begin.lua``: take a task's lease (re-entrant for ``token``) with a new fence;
        counts attempt 1 of a task never attempted. Returns the task's BEGUN_FIELDS.

        KEYS: task hash, lease, task events.
        ARGV: token, lease TTL (ms), now (ms), processor name."""
        k = self.keys
        reply = await self._call("begin", [k.task(task_id), k.lease(task_id), k.events(task_id)],
                                 [token, ttl_ms, now, processor], together=True)
        tag = reply[0]
        if tag == "ok":
            return Begun(fence=int(reply[1]), attempts=int(reply[2]),
                         cancel_requested=reply[3] == "1", counted=reply[4] == "1",
                         task={f: v for f, v in zip(BEGUN_FIELDS, reply[5], strict=True)
                               if v is not None})
        if tag == "terminal":
            return AlreadyTerminal(reply[1])
        if tag == "busy":
            return HeldElsewhere()
        if tag == "missing":
            return MISSING
        raise _unexpected("begin", tag)

    async def count_attempt(self, task_id: str, token: str) -> AttemptCounted | LeaseLost:
        """``attempt.lua``: count one more provider call; a call after the first adds a
        ``reset`` event. KEYS: task hash, lease, task events. ARGV: token."""
        k = self.keys
        n = int(await self._call("attempt",
                                 [k.task(task_id), k.lease(task_id), k.events(task_id)],
                                 [token]))
        return LEASE_LOST if n < 0 else AttemptCounted(n)

    async def emit(self, task_id: str, token: str,
                   events: Sequence[tuple[str, str]]) -> Held | LeaseLost:
        """``emit.lua``: append events (type, JSON data) to the task's stream, only under our
        lease; coalesced with other tasks' emits. KEYS: lease, task events. ARGV: token, then
        pairs of (type, data)."""
        k = self.keys
        args: list[str] = [token]
        for kind, data in events:
            args += [kind, data]
        # Every task of a processor emits as its provider streams (200 streams at 50 tokens/s
        # are 10,000 emits a second): together, not one round trip each.
        ok = await self._call("emit", [k.lease(task_id), k.events(task_id)], args,
                              together=True)
        return HELD if ok else LEASE_LOST

    async def complete(self, *, task_id: str, token: str, status: str, result_json: bytes | str,
                       error_json: bytes | str, now: int, retention_s: int,
                       view_json: bytes, events: Sequence[tuple[str, str]] = (),
                       ack_entry: str = "", tries_json: bytes | str = "") -> Held | LeaseLost:
        """``complete.lua``: mark the task terminal (after its row is stored): ``events`` not
        sent yet (type, JSON data), status, result, terminal event, lease released, retention,
        off its tenant's active set, into or out of the dead letters; then the batches-stream
        entry ``ack_entry`` acknowledged, when given (the batch's last task).

        KEYS: task hash, lease, task events, dead letters, stats, batches stream.
        ARGV: token, status, result JSON, error JSON, now (ms), retention (s), terminal event
        type, its data (the task's final view), task id, key prefix of the active sets,
        processors' group, the entry to acknowledge ('' for none), the task's provider calls
        (``tries_json``, '' to leave them), then pairs of (type, data)."""
        k = self.keys
        args: list[Any] = [token, status, result_json, error_json, now, retention_s,
                           tasks.TERMINAL_EVENT[status], view_json, task_id,
                           k.tenant_active(""), BATCHES_GROUP, ack_entry, tries_json]
        for kind, data in events:
            args += [kind, data]
        ok = await self._call(
            "complete",
            [k.task(task_id), k.lease(task_id), k.events(task_id), k.dead_letters, k.stats,
             k.batches_stream], args, together=True)
        return HELD if ok else LEASE_LOST

    async def renew(self, task_id: str, token: str, ttl_ms: int) -> Held | LeaseLost:
        """``renew.lua``: compare-and-expire our lease. KEYS: lease. ARGV: token, TTL (ms)."""
        ok = await self._call("renew", [self.keys.lease(task_id)], [token, ttl_ms])
        return HELD if ok else LEASE_LOST

    async def renew_many(self, leases: Sequence[tuple[str, str]],
                         ttl_ms: int) -> list[Held | LeaseLost]:
        """``renew.lua`` for many (task id, token) pairs in one pipeline: one round trip."""
        async with self.redis.pipeline(transaction=False) as p:
            for task_id, token in leases:
                await self._call("renew", [self.keys.lease(task_id)], [token, ttl_ms], client=p)
            results = await p.execute()
        return [HELD if ok else LEASE_LOST for ok in results]

    async def note_try(self, task_id: str, token: str, call_json: bytes) -> bool:
        """``tried.lua``: note one ended provider call of the task while our lease holds.
        KEYS: task hash, lease. ARGV: token, the call (JSON). False: not noted."""
        k = self.keys
        return bool(await self._call("tried", [k.task(task_id), k.lease(task_id)],
                                     [token, call_json]))

    async def release_lease(self, task_id: str, token: str) -> Held | LeaseLost:
        """``release.lua`` on a task's lease: compare-and-delete. KEYS: lease. ARGV: token."""
        return await self.release_lock(self.keys.lease(task_id), token)

    async def handoff(self, *, entry_id: str, batch_id: str, now: int,
                      task_ids: Sequence[str]) -> int:
        """``handoff.lua``: queue a new batch entry with unfinished tasks and acknowledge the
        old one. Returns the number of tasks handed off.

        KEYS: batches stream, backlog, stats.
        ARGV: processors' group, old entry id, batch id, now (ms), task ids..."""
        n = await self._call("handoff", self._handoff_keys,
                             [BATCHES_GROUP, entry_id, batch_id, now, *task_ids])
        return int(n)

    async def requeue(self, task_id: str, token: str, *, streamed: bool) -> Held | LeaseLost:
        """``requeue.lua``: a rate-limited task goes back to waiting in the queue: lease
        released, status queued, the refused call uncounted, a ``reset`` if it had streamed,
        and a new tasks-stream entry. LEASE_LOST when the lease was no longer ours.

        KEYS: task hash, lease, task events, tasks stream.
        ARGV: lease token, '1' when it had streamed, task id."""
        k = self.keys
        done = await self._call(
            "requeue", [k.task(task_id), k.lease(task_id), k.events(task_id), k.tasks_stream],
            [token, "1" if streamed else "0", task_id])
        return HELD if int(done) else LEASE_LOST

    # --- plain reads and writes of a task (single commands, no script) ----------------------
    async def all_terminal(self, task_ids: Sequence[str]) -> bool:
        """Whether every task is terminal in Redis (or forgotten by it)."""
        async with self.redis.pipeline(transaction=False) as p:
            for t in task_ids:
                p.hget(self.keys.task(t), "status")
            statuses = await p.execute()
        return all(s is None or s in tasks.TERMINAL for s in statuses)

    async def task_hash(self, task_id: str) -> dict[str, str]:
        return await hash_of(self.redis, self.keys.task(task_id))

    async def keep_for(self, task_id: str, retention_s: int) -> None:
        """Let a finished task's hash and events expire after ``retention_s``."""
        async with self.redis.pipeline(transaction=False) as p:
            p.expire(self.keys.task(task_id), retention_s)
            p.expire(self.keys.events(task_id), retention_s)
            await p.execute()


def _unexpected(step: str, reply: object) -> RuntimeError:
    return RuntimeError(f"{step}.lua answered {reply!r}: the script and shared/steps.py differ")

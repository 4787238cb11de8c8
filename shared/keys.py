"""Every Redis key and channel name Sluice uses. No other module spells a key.

All keys share one prefix (``REDIS_PREFIX``, default ``sluice``) wrapped in a hash tag, so that
on a Redis Cluster every key lands in one slot and each Lua script stays single-slot.
"""

from __future__ import annotations

from dataclasses import dataclass

TASKS_GROUP = "coordinators"
BATCHES_GROUP = "processors"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "sluice"

    @property
    def _p(self) -> str:
        return "{" + self.prefix + "}"

    # --- per task ---------------------------------------------------------------------------
    def task(self, task_id: str) -> str:
        """Hash: the task's request, status, timestamps, fence, result."""
        return f"{self._p}:task:{task_id}"

    def events(self, task_id: str) -> str:
        """Stream: the task's status changes and deltas, read live by clients."""
        return f"{self._p}:events:{task_id}"

    def lease(self, task_id: str) -> str:
        """String: the token of the processor holding the task (SET NX PX)."""
        return f"{self._p}:lease:{task_id}"

    def idempotency(self, tenant: str, key: str) -> str:
        """String: ``<task id> <body hash>`` for an Idempotency-Key."""
        return f"{self._p}:idem:{tenant}:{key}"

    # --- per tenant -------------------------------------------------------------------------
    def tenant_rate(self, tenant: str, window: int) -> str:
        """Counter: the tenant's submissions in one fixed rate window (``window`` = its index,
        epoch ms // window length); it expires shortly after the window ends."""
        return f"{self._p}:rate:{window}:{tenant}"

    def tenant_active(self, tenant: str) -> str:
        """Sorted set: the tenant's queued or running task ids, scored by submit time (ms).
        ``tenant_active("")`` is the prefix Lua scripts append a tenant read from a task hash to."""
        return f"{self._p}:active:{tenant}"

    # --- queues -----------------------------------------------------------------------------
    @property
    def tasks_stream(self) -> str:
        """Stream of new task ids, consumed by the coordinators' group."""
        return f"{self._p}:tasks"

    @property
    def batches_stream(self) -> str:
        """Stream of flushed batches, consumed by the processors' group."""
        return f"{self._p}:batches"

    @property
    def open_batch(self) -> str:
        """List: the batch being filled, of versions before the waiting room (batch.lua moves
        what it still holds into the waiting room, then deletes it)."""
        return f"{self._p}:batch:open"

    @property
    def waiting_count(self) -> str:
        """Counter: placed tasks in the waiting room, not yet flushed into a batch."""
        return f"{self._p}:wait:count"

    @property
    def waiting_tenants(self) -> str:
        """Sorted set: tenants with tasks in the waiting room, scored by virtual start time
        (the least served by weighted share first)."""
        return f"{self._p}:wait:tenants"

    def waiting_line(self, tenant: str) -> str:
        """Sorted set: a tenant's waiting task ids, scored by (submit ms + priority x aging
        step) x 1000 + arrival sequence. ``waiting_line("")`` is the prefix batch.lua appends
        a tenant to."""
        return f"{self._p}:wait:line:{tenant}"

    @property
    def fair_state(self) -> str:
        """Hash: the fair queue's virtual time (v), arrival sequence (seq), and f:<tenant>,
        the finish tag of a tenant with nothing waiting."""
        return f"{self._p}:wait:fair"

    @property
    def tenant_weights(self) -> str:
        """Hash: tenant -> share weight (TENANT_WEIGHTS, written by the coordinators)."""
        return f"{self._p}:wait:weights"

    @property
    def batch_deadline(self) -> str:
        """String: epoch ms at which the open batch must be flushed (the timer)."""
        return f"{self._p}:batch:deadline"

    @property
    def batch_seq(self) -> str:
        return f"{self._p}:batch:seq"

    @property
    def batch_backlog(self) -> str:
        """Counter: tasks in flushed batches not yet read by a processor."""
        return f"{self._p}:batch:backlog"

    @property
    def flush_lock(self) -> str:
        """Lock (SET NX PX) a coordinator holds while it flushes on the timer."""
        return f"{self._p}:lock:flush"

    @property
    def batch_runner_lock(self) -> str:
        """Lock (SET NX PX, renewed) of the one edge running the OpenAI batches."""
        return f"{self._p}:lock:batch-runner"

    @property
    def webhooks_lock(self) -> str:
        """Lock (SET NX PX, renewed) of the one edge sending due webhook deliveries."""
        return f"{self._p}:lock:webhooks"

    @property
    def dead_letters(self) -> str:
        """Sorted set: dead-lettered task ids scored by time."""
        return f"{self._p}:dead"

    # --- liveness and capacity --------------------------------------------------------------
    @property
    def processors_free(self) -> str:
        """Hash: processor name -> free task slots."""
        return f"{self._p}:proc:free"

    @property
    def processors_alive(self) -> str:
        """Sorted set: processor name -> heartbeat expiry (epoch ms)."""
        return f"{self._p}:proc:alive"

    @property
    def processors_room(self) -> str:
        """Hash: processor name -> provider calls its governor last saw room for."""
        return f"{self._p}:proc:room"

    @property
    def processors_inflight(self) -> str:
        """Hash: processor name -> tasks in flight."""
        return f"{self._p}:proc:inflight"

    @property
    def coordinators_alive(self) -> str:
        """Sorted set: coordinator name -> heartbeat expiry (epoch ms)."""
        return f"{self._p}:coord:alive"

    @property
    def deployment(self) -> str:
        """String: the deployment id, also kept in the store (see shared/store_check.py)."""
        return f"{self._p}:deployment"

    @property
    def ai_status(self) -> str:
        """Hash: what processors last learnt about the provider."""
        return f"{self._p}:ai"

    @property
    def stats(self) -> str:
        """Hash: counters (batches by flush reason, tasks by outcome)."""
        return f"{self._p}:stats"

    def rollup(self, minute: int) -> str:
        """Hash: the dashboard's per-minute figures (minute = epoch ms // 60000), kept 24 h."""
        return f"{self._p}:rollup:{minute}"

    def tenant_active_pattern(self) -> str:
        """SCAN pattern of every tenant's active set (the dashboard's admin view)."""
        return f"{self._p}:active:*"
    # --- provider governor (services/processor/governor.py) -----------------------------------
    def governor(self, provider: str) -> str:
        """Hash: one provider's learned state: AIMD window, pause, limits from its headers."""
        return f"{self._p}:gov:{provider}"

    def governor_slots(self, provider: str) -> str:
        """Sorted set: the provider's calls in flight (slot id -> lease expiry, epoch ms)."""
        return f"{self._p}:gov:{provider}:slots"

    def governor_count(self, provider: str, what: str, window: int) -> str:
        """Counter: the provider's ``requests``, ``tokens`` or ``limited`` (429s) in one fixed
        window (``window`` = its index, epoch ms // window length); expires after two."""
        return f"{self._p}:gov:{provider}:{what}:{window}"

    @property
    def governors(self) -> str:
        """Hash: provider id -> JSON label (host, model, key fingerprint), for /api/ai-status."""
        return f"{self._p}:gov:index"

    @property
    def deadlines(self) -> str:
        """Sorted set: task ids with an explicit deadline, scored by it (epoch ms)."""
        return f"{self._p}:deadlines"

    def edge_wake(self, reader: str) -> str:
        """Stream (MAXLEN 1, short TTL): one entry wakes an edge's multiplexed event reader
        ``reader`` from its blocking XREAD, so a stream just added is read at once
        (services/edge/tasks/feeds.py)."""
        return f"{self._p}:edge:wake:{reader}"

    # --- pub/sub ----------------------------------------------------------------------------
    @property
    def batch_channel(self) -> str:
        """Channel: 'the open batch or capacity changed', wakes coordinators."""
        return f"{self._p}:ch:batch"

    @property
    def cancel_channel(self) -> str:
        """Channel: task ids whose cancellation was asked, for the processor holding them."""
        return f"{self._p}:ch:cancel"

    # --- several providers (services/processor/routing.py) ----------------------------------
    def breaker(self, provider: str) -> str:
        """Hash: one provider's breaker (by its name): state (closed, open, half_open),
        failures in a row, open until, cool-down, probe until, last error and when, last
        success, times opened. Shared by every processor (shared/lua/breaker.lua)."""
        return f"{self._p}:breaker:{provider}"

    @property
    def providers_seen(self) -> str:
        """Hash: processor name -> JSON of its providers as it sees them (key configured,
        breaker, governor window, last error), written with its heartbeat; /api/ai-status."""
        return f"{self._p}:providers:seen"

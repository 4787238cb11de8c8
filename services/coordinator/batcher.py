"""The coordinator: reads new tasks, groups them into batches, flushes batches on time.

Correctness lives in one Lua script (``shared/lua/batch.lua``): adding, flushing and
acknowledging happen atomically, so any number of coordinators may run and any may die.
The timer's deadline is a Redis key every coordinator watches, so a batch opened by a
coordinator that died is still flushed on time by another. A short ``SET NX PX`` lock keeps
replicas from all running the same timer flush at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from redis.asyncio.client import PubSub

from services.coordinator.settings import CoordinatorSettings
from shared import figures, groups, logs, metrics, tracing
from shared.keys import BATCHES_GROUP, TASKS_GROUP, Keys
from shared.loops import forever, sleep_unless, until_redis_answers
from shared.redis_conn import UNAVAILABLE, RedisClient
from shared.runtime import ServiceGroup
from shared.steps import BatchPolicy, BatchState, Steps
from shared.timeutil import now_ms

log = logs.get("sluice.coordinator")
READ_COUNT = 256
FLUSH_LOCK_MS = 5000
MAX_TIMER_WAIT_S = 1.0


class Coordinator:
    def __init__(self, settings: CoordinatorSettings, redis: RedisClient) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = Keys(settings.common.redis_prefix)
        self.steps = Steps(redis, self.keys)
        b = settings.batching
        self.policy = BatchPolicy(b.batch_size, b.batch_timeout_ms, b.batch_adaptive,
                                  settings.fairness.aging_ms)
        self.name = settings.name
        self.stopping = asyncio.Event()

    async def _ensure_groups(self) -> None:
        await groups.ensure_group(self.redis, self.keys.tasks_stream, TASKS_GROUP)
        await groups.ensure_group(self.redis, self.keys.batches_stream, BATCHES_GROUP)

    async def _set_weights(self) -> None:
        await self.steps.set_tenant_weights(self.settings.fairness.weights)

    async def run(self) -> None:
        await until_redis_answers(self._ensure_groups, "groups")
        await until_redis_answers(self._set_weights, "weights")
        log.info("coordinator_started", name=self.name)
        async with ServiceGroup() as tg:
            tg.create_task(self._forever(self._intake_once, "intake"))
            tg.create_task(self._forever(self._timer_loop, "timer"))
            tg.create_task(self._forever(self._heartbeat_once, "heartbeat",
                                         self.settings.heartbeat_s))
            tg.create_task(self._forever(self._housekeeping_once, "housekeeping", 2.0))
        with contextlib.suppress(*UNAVAILABLE):  # leaving the pool is a courtesy, not a must
            await self.redis.zrem(self.keys.coordinators_alive, self.name)
        log.info("coordinator_stopped", name=self.name)

    def stop(self) -> None:
        self.stopping.set()

    def refresh_metrics(self) -> Callable[[], Awaitable[None]]:
        """What /metrics reads from Redis at scrape time: the cluster's batch counters."""
        collector = metrics.BatchesFlushed()
        metrics.register("coordinator", collector)
        return lambda: figures.refresh_batches(self.redis, self.keys, collector)

    async def _forever(self, step: Any, what: str, pause: float = 0.0) -> None:
        await forever(step, what, self.stopping, pause=pause, recreate_groups=self._ensure_groups)

    async def _sleep(self, seconds: float) -> None:
        await sleep_unless(self.stopping, seconds)

    # --- batching ---------------------------------------------------------------------------
    async def add(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        pairs = [(entry_id, fields.get("id", "")) for entry_id, fields in entries]
        metrics.tasks_placed.inc(len(pairs))
        spans = await self._hand_on_traces(pairs) if tracing.enabled() else []
        for start in range(0, len(pairs), READ_COUNT):
            await self.steps.batch("add", now=now_ms(), policy=self.policy,
                                   entries=pairs[start:start + READ_COUNT])
        for span in spans:
            tracing.end(span)

    async def _hand_on_traces(self, pairs: list[tuple[str, str]]) -> list[Any]:
        """A batch span for each traced task, child of the edge's, written into the task as
        its new traceparent before the task can be batched (so the processor's span is its
        child)."""
        async with self.redis.pipeline(transaction=False) as p:
            for _entry, task_id in pairs:
                p.hget(self.keys.task(task_id), "traceparent")
            parents = await p.execute()
        spans, handed = [], {}
        for (_entry, task_id), parent in zip(pairs, parents, strict=True):
            if parent:
                span = tracing.start("sluice.batch", parent, "consumer",
                                     {"sluice.task.id": task_id, "sluice.coordinator": self.name})
                spans.append(span)
                handed[task_id] = tracing.traceparent(span)
        await self.steps.hand_on_traces(handed)
        return spans

    async def run_burst(self) -> None:
        """Place every task the tasks stream holds, flush the open batch whatever its size and
        timer, and return (arq's burst mode): tests run the real intake in process and need
        not wait for a timer. The services never call it."""
        await self._ensure_groups()
        await self._set_weights()
        while await self._intake_once(block_ms=None):
            pass
        await self.steps.batch("flush", now=now_ms(), policy=self.policy)

    async def _intake_once(self, block_ms: int | None = 1000) -> int:
        """Read and place new tasks; returns how many entries were read."""
        reply: Any = await self.redis.xreadgroup(
            TASKS_GROUP, self.name, {self.keys.tasks_stream: ">"}, count=READ_COUNT,
            block=block_ms)
        read = 0
        for _stream, entries in reply or []:
            if entries:
                read += len(entries)
                await self.add(entries)
        return read

    async def flush(self, mode: Literal["timer", "idle"]) -> int:
        """Flush by 'timer' (under the flush lock: one replica runs a due timer) or 'idle';
        returns batches flushed. An 'idle' flush takes no lock: batch.lua is atomic and reads
        the room as it is, so replicas answering the same capacity report flush no task twice
        and no more than there is room for; the lock cost two round trips a report."""
        if mode == "idle":
            return (await self.flush_idle()).flushed
        token = secrets.token_hex(8)
        lock = self.keys.flush_lock
        if not await self.redis.set(lock, token, nx=True, px=FLUSH_LOCK_MS):
            return 0
        try:
            state: BatchState = await self.steps.batch(mode, now=now_ms(), policy=self.policy)
            return state.flushed
        finally:
            await self.steps.release_lock(lock, token)

    async def flush_idle(self) -> BatchState:
        return await self.steps.batch("idle", now=now_ms(), policy=self.policy)

    async def _timer_loop(self) -> None:
        pubsub: PubSub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.keys.batch_channel)
        try:
            known: int | None = None
            while not self.stopping.is_set():
                known = await self._timer_step(pubsub, known)
        finally:
            await pubsub.aclose()

    async def _timer_step(self, pubsub: PubSub, known: int | None = None) -> int | None:
        """One wait for the timer or a message. ``known``: the deadline as the last step left
        it (None: read it). Returns the deadline when this step learned it, else None."""
        if known is None:
            known = int(await self.redis.get(self.keys.batch_deadline) or 0)
        deadline, now = known, now_ms()
        if deadline and deadline <= now:
            if not await self.flush("timer"):
                await asyncio.sleep(0.005)  # another replica holds the lock and is flushing
            return None
        wait = MAX_TIMER_WAIT_S if not deadline else min(MAX_TIMER_WAIT_S, (deadline - now) / 1000)
        message = await pubsub.get_message(timeout=wait)
        if message is None:
            return None
        kinds = {message.get("data")}
        # Under load every processor reports capacity after each task: one flush answers all
        # the reports already waiting (it reads the state as it is now), instead of one flush,
        # three round trips, per report.
        while (more := await pubsub.get_message(timeout=0)) is not None:
            kinds.add(more.get("data"))
        if "capacity" in kinds and self.settings.batching.batch_adaptive:
            state = await self.flush_idle()
            # The flush read and left the deadline: the next step needs no GET of its own,
            # unless a 'timer' message said another step changed it. A change after the flush
            # publishes 'timer' too, which wakes the next step.
            if kinds == {"capacity"}:
                return state.deadline_ms
        return None

    # --- liveness and housekeeping ------------------------------------------------------------
    async def _heartbeat_once(self) -> None:
        k, now = self.keys, now_ms()
        expiry = now + int(self.settings.heartbeat_s * 3000)
        gone = await self.steps.heartbeat(name=self.name, expiry_ms=expiry,
                                          forget_before_ms=now - 60_000)
        if gone:
            async with self.redis.pipeline(transaction=False) as p:
                p.zrem(k.processors_alive, *gone)
                p.hdel(k.processors_free, *gone)
                p.hdel(k.processors_inflight, *gone)
                p.hdel(k.processors_room, *gone)
                await p.execute()

    async def _housekeeping_once(self) -> None:
        """Take over entries a dead coordinator read but never placed, and trim both streams."""
        _next, entries, _deleted = await self.redis.xautoclaim(
            self.keys.tasks_stream, TASKS_GROUP, self.name,
            min_idle_time=self.settings.reclaim_idle_ms, start_id="0-0", count=READ_COUNT)
        live = [(eid, fields) for eid, fields in entries if fields]
        if live:
            log.warning("reclaimed_tasks", count=len(live))
            metrics.reclaims.labels("tasks").inc(len(live))
            await self.add(live)
        await groups.trim_consumed(self.redis, self.keys.tasks_stream, TASKS_GROUP)
        await groups.trim_consumed(self.redis, self.keys.batches_stream, BATCHES_GROUP)

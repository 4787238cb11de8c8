"""Keeping what this processor holds: task leases and the batch entries it works on.

One loop renews every lease every third of its TTL in one pipeline (one coroutine for all
tasks, not one per task, so 1,000 in-flight streams cost one round trip per renewal). A lease
found lost wakes its task, which stops streaming and writes nothing. The same loop re-claims
our own pending batch entries, which resets their idle time: only a dead processor's entries
grow idle long enough to be reclaimed by others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shared import logs, metrics, tasks
from shared.keys import BATCHES_GROUP, Keys
from shared.loops import cancel_if_asked
from shared.redis_conn import WAIT_OUT, RedisClient
from shared.steps import LeaseLost, Steps

log = logs.get("sluice.processor")


@dataclass(slots=True)
class Lease:
    task_id: str
    token: str
    fence: int
    on_lost: Callable[[], None] | None = None
    lost: bool = False
    done: bool = False  # our complete step finished the task: the lease ended with it
    # When the lease was last (re)set in Redis, on our monotonic clock: it is ours until at
    # least renewed_at + TTL, whatever happens, since only its holder can extend it.
    renewed_at: float = field(default_factory=time.monotonic)

    def mark_lost(self, finished: bool = False) -> None:
        """The lease is gone. ``finished``: because the task is terminal (it ended as the
        renewal went out, by us or another holder): no warning then."""
        if not self.lost and not self.done:
            self.lost = True
            if finished:
                log.info("lease_ended_task_finished", task_id=self.task_id, fence=self.fence)
            else:
                log.warning("lease_lost", task_id=self.task_id, fence=self.fence)
                metrics.leases_lost.inc()
            if self.on_lost is not None:
                self.on_lost()

    def surely_held(self, ttl_ms: int) -> bool:
        """True while half the TTL since the last renewal has not passed: no other holder can
        exist yet, so a check in Redis would only confirm it (Redlock's validity time, with
        half the TTL left as margin for clock drift and the time the caller still needs)."""
        return not self.lost and time.monotonic() - self.renewed_at < ttl_ms / 2000


class LeaseKeeper:
    def __init__(self, redis: RedisClient, steps: Steps, keys: Keys, name: str,
                 ttl_ms: int) -> None:
        self.redis, self.steps, self.keys, self.name = redis, steps, keys, name
        self.ttl_ms = ttl_ms
        self.leases: dict[str, Lease] = {}
        self.entries: set[str] = set()

    def hold(self, lease: Lease) -> None:
        self.leases[lease.task_id] = lease

    def drop(self, task_id: str) -> None:
        self.leases.pop(task_id, None)

    async def run(self, stopping: asyncio.Event, drained: asyncio.Event) -> None:
        interval = self.ttl_ms / 3000
        while not drained.is_set():
            cancel_if_asked()
            try:
                await self.renew_all()
            except WAIT_OUT as exc:
                log.warning("lease_renewal_failed", error=type(exc).__name__,
                            leases=len(self.leases))
            try:
                await asyncio.wait_for(drained.wait(), timeout=interval)
            except TimeoutError:
                pass

    async def _mark_lost(self, lost: list[Lease]) -> None:
        """Tell each run its lease is gone, after one read of the tasks' statuses (rare: a
        lost lease): a terminal task's lease ended with it, which is no cause for a warning."""
        async with self.redis.pipeline(transaction=False) as p:
            for lease in lost:
                p.hget(self.keys.task(lease.task_id), "status")
            statuses = await p.execute()
        for lease, status in zip(lost, statuses, strict=True):
            lease.mark_lost(finished=status in tasks.TERMINAL)

    async def renew_all(self) -> None:
        held = list(self.leases.values())
        if held:
            sent = time.monotonic()
            results = await self.steps.renew_many(
                [(lease.task_id, lease.token) for lease in held], self.ttl_ms)
            lost: list[Lease] = []
            for lease, renewed in zip(held, results, strict=True):
                if isinstance(renewed, LeaseLost):
                    # A task finished while the renewal was out (its complete step ends the
                    # lease) is not a lost lease.
                    if self.leases.get(lease.task_id) is lease and not lease.done:
                        lost.append(lease)
                else:
                    lease.renewed_at = sent
                    metrics.lease_renewals.inc()
            if lost:
                await self._mark_lost(lost)
        if self.entries:
            await self.redis.xclaim(self.keys.batches_stream, BATCHES_GROUP, self.name, 0,
                                    list(self.entries), justid=True)

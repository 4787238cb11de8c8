"""Deadlines of tasks that wait in Redis: a task whose explicit deadline passes while it is
still queued or batched fails with ``deadline_exceeded`` and is never sent to the provider,
even when no processor takes it (a paused provider leaves batches unclaimed). Every processor
sweeps; expire.lua makes a second sweep of the same task a no-op. A task a processor already
holds is its holder's: the governor checks the deadline while the task waits for admission.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from shared import tasks
from shared.governor import GovernorSteps
from shared.keys import Keys
from shared.redis_conn import RedisClient, hash_of
from shared.timeutil import iso, now_ms

SWEEP_S = 0.25
BATCH = 100


def deadline_error() -> dict[str, Any]:
    return {"code": "deadline_exceeded",
            "message": "the task's deadline passed before the provider had room for it"}


class DeadlineSweeper:
    def __init__(self, redis: RedisClient, keys: Keys, steps: GovernorSteps,
                 retention_s: int,
                 on_expired: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.redis, self.keys, self.steps, self.retention_s = redis, keys, steps, retention_s
        self.on_expired = on_expired  # the task's row: written by whoever failed it

    async def sweep_once(self) -> int:
        """Fail the tasks whose deadline has passed; returns how many it failed."""
        now = now_ms()
        due: list[str] = await self.redis.zrangebyscore(  # type: ignore[assignment]
            self.keys.deadlines, "-inf", now, start=0, num=BATCH)
        failed = 0
        for task_id in due:
            h = await hash_of(self.redis, self.keys.task(task_id))
            error = deadline_error()
            view = ({**tasks.view_from_redis(h), "status": tasks.FAILED, "error": error,
                     "completed_at": iso(now)} if h else {})
            if await self.steps.expire(task_id, now, self.retention_s, error, view) == "expired":
                failed += 1
                if self.on_expired is not None:
                    await self.on_expired(task_id)
        return failed

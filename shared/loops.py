"""The loop every long-running service step runs in: until stopped, surviving Redis outages."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ResponseError

from shared import logs
from shared.redis_conn import WAIT_OUT, wait_event

log = logs.get("sluice.loop")
T = TypeVar("T")


async def sleep_unless(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when ``stopping`` is set."""
    try:
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
    except TimeoutError:
        pass


async def forever(step: Callable[[], Awaitable[object]], what: str, stopping: asyncio.Event,
                  *, pause: float = 0.0,
                  recreate_groups: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run ``step`` until ``stopping`` is set. Redis being unreachable, or full (over
    ``maxmemory``), is waited out with capped, logged backoff; a consumer group that vanished
    (Redis restarted without persistence) is recreated. Any other error propagates and stops
    the service."""
    delay = 0.1
    regroup = False
    while not stopping.is_set():
        try:
            if regroup and recreate_groups is not None:
                await recreate_groups()  # in here, so a full Redis is waited out here too
            regroup = False
            await step()
            delay = 0.1
        except WAIT_OUT as exc:
            log.warning(wait_event(exc), loop=what, retry_in_s=round(delay, 2),
                        error=type(exc).__name__)
            await sleep_unless(stopping, delay)
            delay = min(delay * 2, 5.0)
            continue
        except ResponseError as exc:
            if "NOGROUP" not in str(exc) or recreate_groups is None:
                raise
            log.error("consumer_group_missing", loop=what)
            regroup = True
            continue
        if pause:
            await sleep_unless(stopping, pause)


async def until_redis_answers(step: Callable[[], Awaitable[T]], what: str, **context: object
                              ) -> T:
    """Run one idempotent step, retrying while Redis is unreachable (a restart, a failover) or
    full. Used where giving up would strand work: acknowledging a batch, finishing a task."""
    delay = 0.1
    while True:
        try:
            return await step()
        except WAIT_OUT as exc:
            log.warning(wait_event(exc), loop=what, error=type(exc).__name__,
                        retry_in_s=round(delay, 2), **context)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

"""The loop every long-running service step runs in: until stopped, surviving Redis outages."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ResponseError

from shared import logs, metrics
from shared.redis_conn import WAIT_OUT, wait_event

log = logs.get("sluice.loop")
T = TypeVar("T")


def cancel_if_asked() -> None:
    """Raise CancelledError when this task was asked to stop but the request got lost.

    On Python 3.11 ``asyncio.wait_for`` returns normally when it is cancelled just as its inner
    future completes (gh-86296), and redis-py sends every command through it: a task cancelled
    while it writes to Redis carries on as if nothing happened. A ``TaskGroup`` aborting after
    one failure then waits forever on that task, and the process lives on with no heartbeat.
    The request is still counted (``Task.cancelling()``), so loops ask after every step."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


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
    failing_since: float | None = None
    while not stopping.is_set():
        cancel_if_asked()
        try:
            if regroup and recreate_groups is not None:
                await recreate_groups()  # in here, so a full Redis is waited out here too
            regroup = False
            await step()
            delay = 0.1
            if failing_since is not None:
                _answers_again(what, failing_since)
                failing_since = None
        except WAIT_OUT as exc:
            if failing_since is None:
                failing_since = time.monotonic()
            metrics.redis_errors.labels(what).inc()
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
    failing_since: float | None = None
    while True:
        cancel_if_asked()
        try:
            result = await step()
        except WAIT_OUT as exc:
            if failing_since is None:
                failing_since = time.monotonic()
            metrics.redis_errors.labels(what).inc()
            log.warning(wait_event(exc), loop=what, error=type(exc).__name__,
                        retry_in_s=round(delay, 2), **context)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        if failing_since is not None:
            _answers_again(what, failing_since, **context)
        return result


def _answers_again(what: str, since: float, **context: object) -> None:
    """The line after the warnings of an outage: Redis answers this loop again."""
    log.info("redis_answers_again", loop=what, down_s=round(time.monotonic() - since, 2),
             **context)


@contextlib.asynccontextmanager
async def in_background(tick: Callable[[], Awaitable[object]], what: str,
                        pause: float) -> AsyncIterator[None]:
    """Run ``tick`` every ``pause`` seconds in the background while the context is open (an
    edge's side jobs, in its ``cleanup_ctx``). A full or unreachable Redis is waited out by
    :func:`forever`; any other error of one tick is logged and the next tick runs, so one bad
    row never stops the service. On exit the loop stops and is awaited: no orphan task."""
    async def step() -> None:
        try:
            await tick()
        except WAIT_OUT:
            raise
        except Exception:
            log.exception("background_tick_failed", loop=what)

    stopping = asyncio.Event()
    task = asyncio.create_task(forever(step, what, stopping, pause=pause))
    try:
        yield
    finally:
        stopping.set()
        await task

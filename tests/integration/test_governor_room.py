"""The processor's governor tells its processor when the provider's room opens or closes, so
the processor claims work and reports its room to the coordinators: also when a pause ends by
the clock alone, with nothing else happening."""

from __future__ import annotations

import asyncio
import contextlib

from services.processor.governor import Governor
from shared.governor import GovernorSteps, Limits
from shared.keys import Keys
from shared.redis_conn import RedisClient
from shared.timeutil import now_ms


async def test_a_pause_that_ends_by_the_clock_is_told(redis: RedisClient, keys: Keys) -> None:
    told: asyncio.Queue[bool] = asyncio.Queue()
    governor = Governor(redis, keys, name="p1", enabled=True, limits=Limits(), lease_ms=30_000,
                        base_url="http://provider.test/v1", api_key=None, model="m",
                        on_change=told.put_nowait)
    stopping, drained = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(governor.run(stopping, drained))
    try:
        async with asyncio.timeout(10):
            assert await told.get() is True  # the first look: room
            await GovernorSteps(redis, keys, Limits()).settle(
                governor.default, now_ms(),
                [{"slot": "gone", "outcome": "limited", "pause_until": now_ms() + 1500}])
            assert await told.get() is False  # its next poll (every second) sees the pause
            assert await told.get() is True  # and, once the 1.5 s are over, that it is over
        assert governor.room() > 0
    finally:
        stopping.set()
        drained.set()
        with contextlib.suppress(asyncio.CancelledError):
            await running

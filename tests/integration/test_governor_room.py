"""The processor's governor tells its processor when the provider's room opens or closes, so
the processor claims work and reports its room to the coordinators: also when a pause ends by
the clock alone, with nothing else happening."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from harness.waiting import until
from services.processor.governor import Governor
from shared.governor import GovernorSteps, Limits
from shared.keys import Keys
from shared.redis_conn import RedisClient
from shared.timeutil import now_ms


@contextlib.asynccontextmanager
async def governing(governor: Governor) -> AsyncIterator[None]:
    """The governor's loop running for the block, stopped and drained after it."""
    stopping, drained = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(governor.run(stopping, drained))
    try:
        yield
    finally:
        stopping.set()
        drained.set()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_a_pause_that_ends_by_the_clock_is_told(redis: RedisClient, keys: Keys) -> None:
    told: asyncio.Queue[bool] = asyncio.Queue()
    governor = Governor(redis, keys, name="p1", enabled=True, limits=Limits(), lease_ms=30_000,
                        base_url="http://provider.test/v1", api_key=None, model="m",
                        on_change=told.put_nowait)
    async with governing(governor):
        async with asyncio.timeout(10):
            assert await told.get() is True  # the first look: room
            await GovernorSteps(redis, keys, Limits()).settle(
                governor.default, now_ms(),
                [{"slot": "gone", "outcome": "limited", "pause_until": now_ms() + 1500}])
            assert await told.get() is False  # its next poll (every second) sees the pause
            assert await told.get() is True  # and, once the 1.5 s are over, that it is over
        assert governor.room() > 0


async def test_tasks_waiting_for_the_window_ask_one_at_a_time_in_order(
        redis: RedisClient, keys: Keys) -> None:
    """20 tasks wait for a window of 1: each asks once as it joins the line (its task then says
    what it waits for), then only the head of the line asks again; they are admitted in the
    order they came."""
    governor = Governor(redis, keys, name="p1", enabled=True,
                        limits=Limits(max_concurrency=1, initial_window=1), lease_ms=30_000,
                        base_url="http://provider.test/v1", api_key=None, model="m",
                        on_change=lambda _open: None)
    asked: dict[str, int] = {}
    admit = governor.steps.admit

    async def counted(provider: str, task_id: str, *args: Any, **kw: Any) -> Any:
        asked[task_id] = asked.get(task_id, 0) + 1
        return await admit(provider, task_id, *args, **kw)

    governor.steps.admit = counted  # type: ignore[method-assign]  # the real step, counted
    done = [asyncio.Event() for _ in range(21)]
    order: list[int] = []

    async def task(i: int) -> None:
        async with governor.call(f"t{i}", {"messages": []}, None):
            order.append(i)
            await done[i].wait()

    async with governing(governor):
        async with asyncio.timeout(20), asyncio.TaskGroup() as tg:
            tg.create_task(task(0))
            await until(lambda: order == [0], 5, "the first call in")
            for i in range(1, 21):
                tg.create_task(task(i))
                await until(lambda i=i: governor.waiting == i, 5, f"task {i} to wait")
            await until(lambda: asked.get("t1", 0) >= 10, 10, "the head to ask 10 times")
            assert {t: n for t, n in asked.items() if t not in ("t0", "t1")} == {
                f"t{i}": 1 for i in range(2, 21)}
            for i in range(21):
                done[i].set()
                if i < 20:
                    await until(lambda i=i: len(order) == i + 2, 5, f"task {i + 1} in")
        assert order == list(range(21))


async def test_a_room_that_grows_while_open_is_told(redis: RedisClient, keys: Keys) -> None:
    """The processor stops claiming when its own count says the room is spent (tasks claimed,
    not yet admitted), while the governor still sees room: open, open. When the window then
    grows, that must be told too, or the processor claims nothing more until one of its calls
    ends (the long-call burst: 23 calls in flight of a window of 46 for a whole 10 s call)."""
    told: asyncio.Queue[bool] = asyncio.Queue()
    limits = Limits(initial_window=4)
    governor = Governor(redis, keys, name="p1", enabled=True, limits=limits, lease_ms=30_000,
                        base_url="http://provider.test/v1", api_key=None, model="m",
                        on_change=told.put_nowait)
    steps = GovernorSteps(redis, keys, limits)
    async with governing(governor):
        async with asyncio.timeout(10):
            assert await told.get() is True  # the first look: room 4
            for i in range(2):  # another processor's calls: room 2, still open
                await steps.admit(governor.default, f"t{i}", f"{now_ms()}:p2:{i}", now_ms(),
                                  30_000, 10)
            await redis.hset(keys.governor(governor.default), "window", 10)  # room 8
            assert await told.get() is True
        await until(lambda: governor.room() == 8, 5, "the grown room seen")


async def test_a_call_grows_the_window_once_at_its_first_token_not_again_at_its_end(
        redis: RedisClient, keys: Keys) -> None:
    """Before, the end of a streamed call did not say its first token had been counted, so a
    call that ended while the window was full grew it twice (probing past a learned ceiling
    twice as often)."""
    governor = Governor(redis, keys, name="p1", enabled=True,
                        limits=Limits(initial_window=2), lease_ms=30_000,
                        base_url="http://provider.test/v1", api_key=None, model="m",
                        on_change=lambda _open: None)
    state = keys.governor(governor.default)

    async def window() -> float:
        return float(await redis.hget(state, "window") or 0)

    async with governing(governor):
        async with asyncio.timeout(20):
            first = [governor.call(f"t{i}", {"messages": []}, None) for i in range(2)]
            for call in first:
                await call.__aenter__()
                call.accepted()
            await until(lambda: governor.rooms[governor.default].limit == 4, 5,
                        "the first tokens settled")  # 2 calls taken at once: 2 x 2
            more = [governor.call(f"u{i}", {"messages": []}, None) for i in range(2)]
            for call in more:
                await call.__aenter__()  # 4 in flight: the window is full
            for call in first:
                await call.__aexit__(None, None, None)
            await until(lambda: governor.rooms[governor.default].in_flight == 2, 5,
                        "the ends settled")
            assert await window() == 4
            for call in more:
                await call.__aexit__(None, None, None)

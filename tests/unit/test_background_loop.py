"""``loops.in_background``: an edge's side job (batch runner, webhook sender) survives a bad
tick and is stopped and awaited when its context closes."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from shared import loops


async def test_a_failing_tick_is_logged_and_the_next_one_runs(
        capsys: pytest.CaptureFixture[str]) -> None:
    ticks: list[int] = []
    third = asyncio.Event()

    async def tick() -> None:
        ticks.append(len(ticks))
        if len(ticks) == 1:
            raise ValueError("a bad row")
        if len(ticks) == 3:
            third.set()

    async with loops.in_background(tick, "test", pause=0.001):
        await asyncio.wait_for(third.wait(), 10)
    stopped_at = len(ticks)
    await asyncio.sleep(0.01)
    assert len(ticks) == stopped_at  # stopped with its context: no orphan task
    assert "background_tick_failed" in capsys.readouterr().out


async def test_an_unreachable_redis_is_waited_out_not_logged_as_a_failure(
        capsys: pytest.CaptureFixture[str]) -> None:
    ticks: list[int] = []
    second = asyncio.Event()

    async def tick() -> None:
        ticks.append(1)
        if len(ticks) == 1:
            raise RedisConnectionError("gone")
        second.set()

    async with loops.in_background(tick, "test", pause=0.001):
        await asyncio.wait_for(second.wait(), 10)
    out = capsys.readouterr().out
    assert "redis_unavailable" in out and "background_tick_failed" not in out

"""A client of ``shared.redis_watch.watched``: no timer per command, and still no command waits
on a Redis that does not answer for longer than the probe's timeout (about)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from harness.processes import RedisServer
from harness.redis_sleep import debug_redis, put_to_sleep
from harness.waiting import until
from shared.redis_conn import UNAVAILABLE
from shared.redis_watch import watched

TIMEOUT_S = 0.5  # the probe's patience
EVERY_S = 0.1
SLEEP_S = 4  # Redis asleep for far longer than that


@pytest.fixture
def sleepy(tmp_path: Path) -> Iterator[RedisServer]:
    with debug_redis(tmp_path / "redis") as server:
        yield server


async def test_commands_waiting_on_a_redis_that_does_not_answer_fail_before_it_wakes(
        sleepy: RedisServer) -> None:
    async with watched(sleepy.url, timeout_s=TIMEOUT_S, every_s=EVERY_S) as redis:
        await redis.set("k", "before")
        sleeper = await put_to_sleep(sleepy, SLEEP_S)
        try:
            waiting = [asyncio.ensure_future(redis.get("k")) for _ in range(3)]
            done, _ = await asyncio.wait(waiting, timeout=SLEEP_S - 1)
            # Unwatched, each would still be waiting (no per-command timeout): answered
            # once Redis wakes, SLEEP_S after the sleep began.
            assert len(done) == 3, "a command still waits on the sleeping Redis"
            for w in done:
                assert isinstance(w.exception(), UNAVAILABLE), w
                assert isinstance(w.exception(), RedisConnectionError)
        finally:
            sleeper.close()
        # once Redis answers again, the same client works: new connections
        async def answered() -> bool:
            try:
                return await redis.get("k") == "before"
            except UNAVAILABLE:
                return False
        await until(answered, 15, "the same client answering once Redis woke")


async def test_a_redis_that_answers_is_left_alone(sleepy: RedisServer) -> None:
    """The probe closes nothing while its PINGs are answered: a command that takes longer
    than a probe round (a blocking read) still gets its answer on its connection."""
    async with watched(sleepy.url, timeout_s=TIMEOUT_S, every_s=EVERY_S) as redis:
        slow = asyncio.ensure_future(redis.blpop(["q2"], timeout=0))
        for _ in range(int(4 * TIMEOUT_S / EVERY_S)):
            await redis.ping()
            await asyncio.sleep(EVERY_S)
        assert not slow.done()
        await redis.rpush("q2", "y")
        got = await slow
        assert got is not None and tuple(got) == ("q2", "y")


async def test_its_sockets_have_the_kernel_close_a_connection_to_a_vanished_peer(
        sleepy: RedisServer) -> None:
    async with watched(sleepy.url, timeout_s=TIMEOUT_S, every_s=EVERY_S) as redis:
        pool = redis.connection_pool
        conn = await pool.get_connection()
        try:
            sock = conn._writer.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 5
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 500
        finally:
            await pool.release(conn)

"""A reply is awaited without a timer of its own (shared/redis_conn.py, _QuickRead), and one
that never comes still fails as redis-py's does: a TimeoutError after SOCKET_TIMEOUT, the
connection dropped, the next command on a fresh one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import redis_conn
from shared.config import RedisOverrides
from shared.redis_fence import QuickConnection


async def test_replies_take_no_timer_each(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = redis_conn.connect(redis_url, overrides=RedisOverrides())  # the watch on
    key = "r" + uuid.uuid4().hex[:8]
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    call_at = loop.call_at

    def counted(when: float, callback: Any, *args: Any, **kw: Any) -> asyncio.TimerHandle:
        timers.append(when)
        return call_at(when, callback, *args, **kw)

    try:
        await client.set(key, "0")  # connected before counting
        monkeypatch.setattr(loop, "call_at", counted)
        for _ in range(200):
            await client.incr(key)
        monkeypatch.undo()
        assert await client.get(key) == "200"
        # redis-py's asyncio.timeout scheduled one per reply (200); the watch looks every
        # quarter second while replies are awaited (a handful, more on a slow machine).
        assert len(timers) <= 20
    finally:
        await client.delete(key)
        await client.aclose()


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A server that takes connections and commands and never answers."""
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            pass
        writer.close()
    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_a_reply_that_never_comes_times_out_and_drops_the_connection(
        silent_server: int) -> None:
    conn = QuickConnection(host="127.0.0.1", port=silent_server, socket_timeout=0.3)
    async with asyncio.timeout(10):  # not forever: the watch cuts it
        with pytest.raises(RedisTimeoutError, match="Timeout reading"):
            await conn.connect()  # its handshake's reply (HELLO) never comes
    assert not conn.is_connected and not conn.read_cut

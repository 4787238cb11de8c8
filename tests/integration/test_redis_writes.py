"""A write that cannot go out (the connection closed under it) fails as a connection error, the
step to be run again; the pool takes and gives back connections without redis-py's records
(shared/redis_fence.py, QuickPool); commands are packed by hiredis alone (_QuickPacker)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import DataError

from harness.waiting import until
from shared import redis_conn
from shared.config import RedisOverrides
from shared.redis_conn import UNAVAILABLE
from tests.integration.redis_switches import THIS_RUN

ALL_ON = RedisOverrides()  # what these tests are about: the overrides of REDIS_OVERRIDES on


async def test_a_write_on_a_dead_connection_is_a_connection_error(redis_url: str) -> None:
    client = redis_conn.connect(redis_url, overrides=THIS_RUN)
    assert isinstance(client, Redis)
    try:
        await client.ping()
        conn = await client.connection_pool.get_connection()
        conn._writer.transport.abort()  # the server went away under it
        await asyncio.sleep(0)
        with pytest.raises(UNAVAILABLE):
            await conn.send_command("PING", check_health=False)
            await conn.read_response()
        await client.connection_pool.release(conn)
        assert await client.ping()  # the pool connects afresh
    finally:
        await client.aclose()


async def test_a_command_takes_and_gives_back_its_connection_without_records(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py's pool awaited four observability records per command (export off, so
    no-ops); ours takes none, and its bookkeeping stays whole through cancelled commands."""
    import redis.asyncio.connection as rc

    calls: list[object] = []

    async def record(**kw: Any) -> None:
        calls.append(kw)

    monkeypatch.setattr(rc, "record_connection_count", record)
    client = redis_conn.connect(redis_url, max_connections=4, overrides=ALL_ON)
    assert isinstance(client, Redis)
    pool = client.connection_pool
    assert isinstance(pool, redis_conn.WaitingPool)
    try:
        await client.ping()  # the first connection's creation is not counted
        calls.clear()
        await asyncio.gather(*(client.ping() for _ in range(20)))
        assert calls == []
        async with Redis.from_url(redis_url, decode_responses=True) as watcher:
            async def blocked_blpops() -> set[str]:
                return {c["id"] for c in await watcher.client_list()
                        if c["cmd"] == "blpop" and "b" in c["flags"]}

            before = await blocked_blpops()
            slow = [asyncio.ensure_future(client.blpop(["w" + uuid.uuid4().hex], 5))
                    for _ in range(4)]

            async def all_blocked() -> bool:  # every command sent, each on its read
                return len(await blocked_blpops() - before) == len(slow)
            await until(all_blocked, 10, f"Redis to hold the {len(slow)} BLPOPs blocked")
        for task in slow:
            task.cancel()
        await asyncio.gather(*slow, return_exceptions=True)
        assert await client.ping()
        assert not pool._in_use_connections and not pool.holding
        assert not pool._turns.locked()
    finally:
        await client.aclose()


PACKED = [("SET", "k", "v"), ("XINFO GROUPS", "stream"), (b"GET", b"k"),
          ("EVALSHA", "abc", 2, "k1", "k2", "é ü", -5, 2**70, 0.1, 1 / 3, 1e-7, b"\x00\xff"),
          ("ZADD", "z", float("inf"), "m"), ("SET", "k", bytearray(b"ba"))]


async def test_commands_are_packed_by_hiredis_alone_and_as_redis_py_packs_them(
        redis_url: str) -> None:
    client = redis_conn.connect(redis_url, overrides=ALL_ON)
    assert isinstance(client, Redis)
    try:
        conn = await client.connection_pool.get_connection()
        expected = [b"".join(conn._pack_command_python(*args)) for args in PACKED]
        assert [b"".join(conn.pack_command(*args)) for args in PACKED] == expected
        # The same packer, counting what it hands to redis-py's Encoder.encode: nothing but for
        # the one argument hiredis does not take (a bytearray), whose command it falls back on.
        encoded: list[Any] = []
        packer = type(conn._command_packer)(
            conn._pack_command_python, lambda v: encoded.append(v) or conn.encoder.encode(v))
        assert [b"".join(packer.pack(*args)) for args in PACKED[:-1]] == expected[:-1]
        assert encoded == []
        assert b"".join(packer.pack(*PACKED[-1])) == expected[-1]
        assert encoded == [b"SET", "k"]
        with pytest.raises(DataError):
            conn.pack_command("SET", "k", True)  # as redis-py refuses it
        await client.connection_pool.release(conn)
        async with client.pipeline(transaction=False) as p:
            p.set("packed", "é")
            p.get("packed")
            assert await p.execute() == [True, "é"]
    finally:
        await client.delete("packed")
        await client.aclose()

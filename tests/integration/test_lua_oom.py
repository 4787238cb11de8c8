"""Every Lua script over Redis ``maxmemory``: refused whole, or (``allow-oom``) run whole.

Each script gets a state in which it really writes (checked with memory free), is then called
the way the services call it (redis-py's registered script: EVALSHA, SCRIPT LOAD after a
NOSCRIPT) on a real redis-server whose ``maxmemory`` is below what it uses, and the keyspace is
compared key by key before and after. A script without a scenario here fails the test, so a new
script cannot skip the question.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from shared.keys import BATCHES_GROUP, TASKS_GROUP, Keys
from shared.scripts import _DIR, NAMES, Scripts
from tests.harness import RedisServer

K = Keys("oom")
T, TENANT, TOKEN, NOW = "tsk_1", "acme", "tok", 1_700_000_000_000
Call = tuple[list[str], list[object]]


@dataclass(frozen=True)
class Case:
    setup: Callable[[aioredis.Redis], Awaitable[Call]]
    allow_oom: bool  # runs over maxmemory: it finishes or keeps work already running


async def _task(r: aioredis.Redis, status: str, **extra: str) -> None:
    await r.hset(K.task(T), mapping={"id": T, "tenant": TENANT, "status": status,
                                     "request": '{"prompt":"x"}', "model": "m",
                                     "created_at": str(NOW), "attempts": "1", "fence": "1",
                                     **extra})


async def _leased(r: aioredis.Redis, status: str = "running") -> None:
    await _task(r, status)
    await r.set(K.lease(T), TOKEN, px=950_000)


async def submit(r: aioredis.Redis) -> Call:
    # No Idempotency-Key: the script's first write is ZREMRANGEBYSCORE, which Redis does not
    # check for OOM by itself (the finding: 202s went on past maxmemory).
    return ([K.task(T), K.events(T), K.tasks_stream, K.idempotency(TENANT, ""),
             K.tenant_rate(TENANT, 1), K.tenant_active(TENANT)],
            [T, TENANT, '{"prompt":"x"}', "m", NOW, "", 86400, '{"status":"queued"}', 3600,
             0, 60_000, 0])


async def batch(r: aioredis.Redis) -> Call:
    await _task(r, "queued")
    return ([K.open_batch, K.batch_deadline, K.batches_stream, K.tasks_stream, K.batch_seq,
             K.batch_backlog, K.processors_free, K.processors_alive, K.stats],
            ["add", NOW, 10, 1000, "0", TASKS_GROUP, K.task(""), K.events(""), K.batch_channel,
             BATCHES_GROUP, "1-1", T])


async def capacity(r: aioredis.Redis) -> Call:
    return ([K.processors_free, K.processors_alive, K.batch_backlog, K.open_batch,
             K.processors_inflight], ["p1", 5, NOW, 0, K.batch_channel, 0])


async def begin(r: aioredis.Redis) -> Call:
    await _task(r, "batched", attempts="0")
    return [K.task(T), K.lease(T), K.events(T)], [TOKEN, 30_000, NOW, "p1"]


async def attempt(r: aioredis.Redis) -> Call:
    await _leased(r)
    return [K.task(T), K.lease(T), K.events(T)], [TOKEN]


async def emit(r: aioredis.Redis) -> Call:
    await _leased(r)
    return [K.lease(T), K.events(T)], [TOKEN, "content", '{"delta":"hi"}']


async def complete(r: aioredis.Redis) -> Call:
    await _leased(r)
    await r.zadd(K.tenant_active(TENANT), {T: NOW})
    return ([K.task(T), K.lease(T), K.events(T), K.dead_letters, K.stats],
            [TOKEN, "succeeded", '{"content":"x"}', "", NOW, 3600, "done", "{}", T,
             K.tenant_active("")])


async def renew(r: aioredis.Redis) -> Call:
    await _leased(r)
    return [K.lease(T)], [TOKEN, 30_000]


async def release(r: aioredis.Redis) -> Call:
    await _leased(r)
    return [K.lease(T)], [TOKEN]


async def cancel(r: aioredis.Redis) -> Call:
    await _task(r, "queued")
    await r.zadd(K.tenant_active(TENANT), {T: NOW})
    return ([K.task(T), K.events(T), K.tenant_active(TENANT)],
            [TENANT, NOW, K.cancel_channel, T, 3600])


async def handoff(r: aioredis.Redis) -> Call:
    return [K.batches_stream, K.batch_backlog, K.stats], [BATCHES_GROUP, "1-1", "b1", NOW, T]


async def heartbeat(r: aioredis.Redis) -> Call:
    return [K.coordinators_alive, K.processors_alive], ["c1", NOW + 600, NOW - 60_000]


async def retry(r: aioredis.Redis) -> Call:
    await _task(r, "failed")
    await r.zadd(K.dead_letters, {T: NOW})
    return ([K.task(T), K.events(T), K.tasks_stream, K.dead_letters],
            [TENANT, NOW, 3600, T, "", "m", NOW, 0, K.tenant_active("")])


CASES = {
    "submit": Case(submit, False), "batch": Case(batch, False), "begin": Case(begin, False),
    "cancel": Case(cancel, False), "retry": Case(retry, False),
    "capacity": Case(capacity, True), "attempt": Case(attempt, True), "emit": Case(emit, True),
    "complete": Case(complete, True), "renew": Case(renew, True),
    "release": Case(release, True), "handoff": Case(handoff, True),
    "heartbeat": Case(heartbeat, True),
}


def test_every_script_has_a_case_and_declares_its_flags() -> None:
    on_disk = {p.stem for p in _DIR.glob("*.lua")}
    assert on_disk == set(NAMES) == set(CASES)
    for name, case in CASES.items():
        first = (_DIR / f"{name}.lua").read_text().split("\n", 1)[0]
        assert first == ("#!lua flags=allow-oom" if case.allow_oom else "#!lua"), name


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis-oom"), appendonly=False).start()
    yield srv
    srv.kill()


@pytest.fixture
async def r(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    await client.config_set("maxmemory", 0)
    await client.flushall()
    yield client
    await client.config_set("maxmemory", 0)
    await client.aclose()


async def keyspace(server: RedisServer) -> dict[bytes, tuple[bytes | None, int]]:
    """Every key's serialized value and TTL (to 100 s: renew and complete change TTLs)."""
    raw = aioredis.Redis.from_url(server.url)
    try:
        return {key: (await raw.dump(key), max(-1, int(await raw.pttl(key)) // 100_000))
                for key in sorted(await raw.keys("*"))}
    finally:
        await raw.aclose()


async def full(r: aioredis.Redis) -> None:
    """maxmemory below what Redis uses already (noeviction): every deny-OOM command fails."""
    await r.config_set("maxmemory", 1)


@pytest.mark.parametrize("name", sorted(CASES))
async def test_script_writes_when_memory_is_free(
        name: str, r: aioredis.Redis, server: RedisServer) -> None:
    """The scenario is a real write: with room, the script changes the keyspace."""
    keys, args = await CASES[name].setup(r)
    before = await keyspace(server)
    await getattr(Scripts.register(r), name)(keys=keys, args=args)
    assert await keyspace(server) != before


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if not c.allow_oom))
@pytest.mark.parametrize("cached", [True, False], ids=["evalsha", "after-script-flush"])
async def test_script_is_refused_whole_over_maxmemory(
        name: str, cached: bool, r: aioredis.Redis, server: RedisServer) -> None:
    keys, args = await CASES[name].setup(r)
    scripts = Scripts.register(r)
    if cached:
        await r.script_load(getattr(scripts, name).script)
    else:
        await r.script_flush()  # NOSCRIPT, then redis-py's SCRIPT LOAD and EVALSHA again
    before = await keyspace(server)
    await full(r)
    with pytest.raises(OutOfMemoryError):
        await getattr(scripts, name)(keys=keys, args=args)
    await r.config_set("maxmemory", 0)
    assert await keyspace(server) == before  # nothing half-written


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.allow_oom))
async def test_in_flight_script_runs_whole_over_maxmemory(
        name: str, r: aioredis.Redis, server: RedisServer) -> None:
    keys, args = await CASES[name].setup(r)
    scripts = Scripts.register(r)
    before = await keyspace(server)
    await full(r)
    reply = await getattr(scripts, name)(keys=keys, args=args)
    await r.config_set("maxmemory", 0)
    assert await keyspace(server) != before
    if name in ("emit", "complete", "renew", "release"):
        assert reply == 1, reply  # the token check passed and the script went to its end


async def test_legacy_script_slips_past_after_a_first_write(
        r: aioredis.Redis, server: RedisServer) -> None:
    """Why the shebang: without one, Redis checks OOM only at a script's first deny-OOM
    write, and a first write that is not deny-OOM lets every later one through."""
    await full(r)
    await r.eval("redis.call('DEL', KEYS[1]); redis.call('SET', KEYS[2], 'v')", 2, "a", "b")
    await r.config_set("maxmemory", 0)
    assert await r.get("b") == "v"


"""Every Lua script over Redis ``maxmemory``: refused whole, or (``allow-oom``) run whole.

Each script gets a state in which it really writes (checked with memory free), is then called
the way the services call it (its method in shared/steps.py: redis-py's registered script,
EVALSHA, SCRIPT LOAD after a NOSCRIPT) on a real redis-server whose ``maxmemory`` is below
what it uses, and the keyspace is compared key by key before and after. A script without a
case here fails the test, so a new script cannot skip the question.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from harness.processes import RedisServer
from shared import governor
from shared.governor import BreakerPolicy, GovernorSteps, Limits
from shared.keys import Keys
from shared.scripts import DIR, NAMES, source
from shared.steps import HELD, BatchPolicy, Steps, TenantLimits

K = Keys("oom")
T, TENANT, TOKEN, NOW = "tsk_1", "acme", "tok", 1_700_000_000_000
Step = Callable[[Steps], Awaitable[Any]]


@dataclass(frozen=True)
class Case:
    setup: Callable[[aioredis.Redis], Awaitable[None]]  # a state in which the step writes
    step: Step
    allow_oom: bool  # runs over maxmemory: it finishes or keeps work already running


async def nothing(r: aioredis.Redis) -> None:
    pass


async def queued(r: aioredis.Redis, status: str = "queued", **extra: str) -> None:
    await r.hset(K.task(T), mapping={"id": T, "tenant": TENANT, "status": status,
                                     "request": '{"prompt":"x"}', "model": "m",
                                     "created_at": str(NOW), "attempts": "1", "fence": "1",
                                     **extra})
    await r.zadd(K.tenant_active(TENANT), {T: NOW})


async def batched(r: aioredis.Redis) -> None:
    await queued(r, "batched", attempts="0")


async def failed(r: aioredis.Redis) -> None:
    await queued(r, "failed")
    await r.zadd(K.dead_letters, {T: NOW})


async def leased(r: aioredis.Redis) -> None:
    await queued(r, "running")
    await r.set(K.lease(T), TOKEN, px=950_000)


def gov(s: Steps) -> GovernorSteps:
    return GovernorSteps(s.redis, K, Limits())


SLOT = f"{NOW}:p1"


async def slot_held(r: aioredis.Redis) -> None:
    await r.zadd(K.governor_slots("p"), {SLOT: NOW + 30_000})


async def slot_expired(r: aioredis.Redis) -> None:
    await r.zadd(K.governor_slots("p"), {SLOT: NOW - 1})


async def due(r: aioredis.Redis) -> None:
    await queued(r)
    await r.zadd(K.deadlines, {T: NOW})


CASES = {
    # No Idempotency-Key: submit's first write is a ZREMRANGEBYSCORE, which Redis does not
    # check for OOM by itself (the finding: 202s went on past maxmemory).
    "submit": Case(nothing, lambda s: s.submit(
        task_id=T, tenant=TENANT, request_json=b'{"prompt":"x"}', model="m", now=NOW,
        idem_key=None, body_hash="", idempotency_ttl_s=86400, first_event='{"status":"queued"}',
        task_ttl_s=3600, limits=TenantLimits(0, 60_000, 0)), False),
    "batch": Case(queued, lambda s: s.batch(
        "add", now=NOW, policy=BatchPolicy(10, 1000, False), entries=[("1-1", T)]), False),
    "begin": Case(batched, lambda s: s.begin(
        task_id=T, token=TOKEN, ttl_ms=30_000, now=NOW, processor="p1"), False),
    "cancel": Case(queued, lambda s: s.cancel(task_id=T, tenant=TENANT, now=NOW), False),
    "retry": Case(failed, lambda s: s.retry(
        task_id=T, tenant=TENANT, now=NOW, task_ttl_s=3600, stored=None), False),
    "capacity": Case(nothing, lambda s: s.report_capacity(
        name="p1", free=5, expiry_ms=NOW, taken=0, inflight=0, room=100), True),
    "heartbeat": Case(nothing, lambda s: s.heartbeat(
        name="c1", expiry_ms=NOW, forget_before_ms=NOW - 60_000), True),
    "attempt": Case(leased, lambda s: s.count_attempt(T, TOKEN), True),
    "emit": Case(leased, lambda s: s.emit(T, TOKEN, [("content", '{"delta":"hi"}')]), True),
    "complete": Case(leased, lambda s: s.complete(
        task_id=T, token=TOKEN, status="succeeded", result_json='{"content":"x"}',
        error_json="", now=NOW, retention_s=3600, view_json=b"{}"), True),
    "renew": Case(leased, lambda s: s.renew(T, TOKEN, 30_000), True),
    "release": Case(leased, lambda s: s.release_lease(T, TOKEN), True),
    "requeue": Case(leased, lambda s: s.requeue(T, TOKEN, streamed=True), True),
    "handoff": Case(nothing, lambda s: s.handoff(
        entry_id="1-1", batch_id="b1", now=NOW, task_ids=[T]), True),
    "trace": Case(lambda r: queued(r, traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01"),
                  lambda s: s.hand_on_traces({T: "00-" + "1" * 32 + "-" + "3" * 16 + "-01"}),
                  True),
    "tried": Case(leased, lambda s: s.note_try(T, TOKEN, b'{"provider":"a"}'), False),
    # It only deletes: a finished task is forgotten over maxmemory too.
    "forget": Case(failed, lambda s: s.forget(task_id=T, tenant=TENANT), True),
    # The provider governor's steps (shared/governor.py).
    "admit": Case(queued, lambda s: gov(s).admit("p", T, SLOT, NOW, 30_000, 10), False),
    "settle": Case(slot_held, lambda s: gov(s).settle(
        "p", NOW, [{"slot": SLOT, "outcome": "ok"}]), True),
    "gov_peek": Case(slot_expired, lambda s: gov(s).peek("p", NOW), True),
    "expire": Case(due, lambda s: gov(s).expire(
        T, NOW, 3600, {"code": "deadline_exceeded"}, {}), True),
    "breaker": Case(nothing, lambda s: gov(s).breaker(
        "p", "fail", NOW, BreakerPolicy(1, 1000, 8000, 1000), "boom"), True),
}


def test_every_script_has_a_case_and_declares_its_flags() -> None:
    on_disk = {p.stem for p in DIR.glob("*.lua")}
    assert on_disk == set(NAMES) | set(governor.NAMES) == set(CASES)
    for name, case in CASES.items():
        first = (DIR / f"{name}.lua").read_text().split("\n", 1)[0]
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
    case = CASES[name]
    await case.setup(r)
    before = await keyspace(server)
    await case.step(Steps(r, K))
    assert await keyspace(server) != before


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if not c.allow_oom))
@pytest.mark.parametrize("cached", [True, False], ids=["evalsha", "after-script-flush"])
async def test_script_is_refused_whole_over_maxmemory(
        name: str, cached: bool, r: aioredis.Redis, server: RedisServer) -> None:
    case = CASES[name]
    await case.setup(r)
    if cached:
        await r.script_load(source(name))
    else:
        await r.script_flush()  # NOSCRIPT, then redis-py's SCRIPT LOAD and EVALSHA again
    before = await keyspace(server)
    await full(r)
    with pytest.raises(OutOfMemoryError):
        await case.step(Steps(r, K))
    await r.config_set("maxmemory", 0)
    assert await keyspace(server) == before  # nothing half-written


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.allow_oom))
async def test_in_flight_script_runs_whole_over_maxmemory(
        name: str, r: aioredis.Redis, server: RedisServer) -> None:
    case = CASES[name]
    await case.setup(r)
    before = await keyspace(server)
    await full(r)
    reply = await case.step(Steps(r, K))
    await r.config_set("maxmemory", 0)
    assert await keyspace(server) != before
    if name in ("emit", "complete", "renew", "release"):
        assert reply == HELD, reply  # the token check passed and the script went to its end


async def test_legacy_script_slips_past_after_a_first_write(
        r: aioredis.Redis, server: RedisServer) -> None:
    """Why the shebang: without one, Redis checks OOM only at a script's first deny-OOM
    write, and a first write that is not deny-OOM lets every later one through."""
    await full(r)
    await r.eval("redis.call('DEL', KEYS[1]); redis.call('SET', KEYS[2], 'v')", 2, "a", "b")
    await r.config_set("maxmemory", 0)
    assert await r.get("b") == "v"


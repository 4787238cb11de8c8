"""shared/redis_conn.py against a real 3-master Redis Cluster: what differs from one Redis and
is smoothed over there (scripts in pipelines, pub/sub, waiting for connections, outages)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import DataError, OutOfMemoryError, ResponseError
from structlog.testing import capture_logs

from harness.processes import RedisClusterServers
from shared import redis_conn
from shared.coalesce import Coalescer
from shared.keys import Keys
from shared.redis_conn import UNAVAILABLE, RedisClient
from shared.scripts import Scripts
from shared.steps import HELD, Steps


@pytest.fixture
async def cluster(redis_cluster_url: str) -> AsyncIterator[RedisClient]:
    client = redis_conn.connect(redis_cluster_url)
    await redis_conn.wait_until_ready(client, redis_cluster_url, attempts=5)
    yield client
    await client.aclose()


def keys_on_two_masters(servers: RedisClusterServers) -> tuple[Keys, Keys]:
    first = Keys("k" + uuid.uuid4().hex[:8])
    while True:
        second = Keys("k" + uuid.uuid4().hex[:8])
        if servers.owner_of(second.stats) != servers.owner_of(first.stats):
            return first, second


async def test_the_url_scheme_chooses_the_cluster_client(cluster: RedisClient) -> None:
    assert isinstance(cluster, RedisCluster)
    assert isinstance(redis_conn.connect("redis://127.0.0.1:1/0"), Redis)


async def test_scripts_in_a_pipeline_all_run_in_order(cluster: RedisClient) -> None:
    # What the processor's lease keeper does with renew.lua: one pipeline of many scripts.
    k = Keys("p" + uuid.uuid4().hex[:8])
    incr = cluster.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    async with cluster.pipeline(transaction=False) as p:
        for n in range(1, 6):
            await incr(keys=[k.task(str(n % 2))], args=[n], client=p)  # type: ignore[arg-type]
        p.get(k.task("1"))
        assert await p.execute() == [1, 2, 4, 6, 9, "9"]


async def test_coalesced_emits_run_in_one_pipeline_on_a_cluster(cluster: RedisClient) -> None:
    # The processor's emits of many tasks go out together (shared/coalesce.py): EVALSHA in a
    # pipeline, which the cluster client sends as EVAL.
    k = Keys("e" + uuid.uuid4().hex[:8])
    steps = Steps(cluster, k)
    for n in range(8):
        await cluster.set(k.lease(str(n)), "tok")
    replies = await asyncio.gather(*(steps.emit(str(n), "tok", [("content", f'"{n}"')])
                                     for n in range(8)))
    assert replies == [HELD] * 8
    assert steps._together["emit"].round_trips < 8
    for n in range(8):
        [(_id, fields)] = await cluster.xrange(k.events(str(n)))
        assert fields == {"e": "content", "d": f'"{n}"'}


async def test_a_coalesced_call_redis_cannot_be_sent_fails_alone_on_a_cluster(
        cluster: RedisClient) -> None:
    key = "{c" + uuid.uuid4().hex[:8] + "}"
    coalescer = Coalescer(cluster, cluster.register_script(
        "return redis.call('INCRBY', KEYS[1], ARGV[1])"))
    # the first goes alone; the three that arrive meanwhile go in one pipeline
    replies = await asyncio.gather(coalescer([key], [1]), coalescer([key], [10]),
                                   coalescer([key], [None]), coalescer([key], [100]),
                                   return_exceptions=True)
    assert [type(r) for r in replies] == [int, int, DataError, int], replies
    assert coalescer.round_trips == 2
    assert int(await cluster.get(key) or 0) == 111
    await cluster.delete(key)


@pytest.mark.parametrize("shebang", ["", "#!lua\n", "#!lua flags=allow-oom\n"],
                         ids=["legacy", "shebang", "allow-oom"])
async def test_a_script_may_touch_undeclared_keys_of_its_slot_only(
        cluster: RedisClient, redis_cluster: RedisClusterServers, shebang: str) -> None:
    # batch.lua, complete.lua and retry.lua build task keys from prefixes passed in ARGV:
    # Redis Cluster runs such a script as long as those keys are in the slot of its declared
    # ones, which the shared hash tag guarantees; a key of another slot is refused. Our scripts
    # carry a shebang (Redis 7: refused whole over maxmemory), which forbids cross-slot keys
    # without allow-cross-slot-keys: the same rule, so no script needs that flag.
    mine, other = keys_on_two_masters(redis_cluster)
    touch = cluster.register_script(
        shebang +
        "redis.call('HSET', ARGV[1] .. 'x', 'f', 'v'); return redis.call('HGET', KEYS[1], 'f')")
    await cluster.hset(mine.task("x"), "f", "declared")
    assert await touch(keys=[mine.task("x")], args=[mine.events("")]) == "declared"
    assert await cluster.hget(mine.events("x"), "f") == "v"
    with pytest.raises(ResponseError, match=r"non local key|do not hash to the same slot"):
        await touch(keys=[mine.task("x")], args=[other.events("")])


async def test_over_maxmemory_on_the_deployments_master_scripts_keep_their_flags(
        cluster: RedisClient, redis_cluster: RedisClusterServers) -> None:
    """On a cluster, OOM is a matter of the one master holding the deployment's slot: there
    a script without allow-oom is refused whole, by EVALSHA and by EVAL in a cluster pipeline
    (the shebang is read from the text), and renew.lua (allow-oom) still runs."""
    k = Keys("m" + uuid.uuid4().hex[:8])
    owner = redis_cluster.owner_of(k.stats)
    scripts = Scripts.register(cluster)
    await cluster.set(k.lease("t"), "tok", px=60_000)
    assert not (await redis_conn.memory(cluster, k.stats)).full
    redis_cluster.cli(owner, "CONFIG", "SET", "maxmemory", "1")
    try:
        assert (await redis_conn.memory(cluster, k.stats)).full
        with pytest.raises(OutOfMemoryError):
            await scripts.submit(
                keys=[k.task("t"), k.events("t"), k.tasks_stream, k.idempotency("a", ""),
                      k.tenant_rate("a", 1), k.tenant_active("a")],
                args=["t", "a", "{}", "m", 1, "", 60, "{}", 60, 0, 60_000, 0])
        with pytest.raises(OutOfMemoryError):
            await Steps(cluster, k).cancel(task_id="t", tenant="a", now=1)
        async with cluster.pipeline(transaction=False) as p:
            await scripts.renew(keys=[k.lease("t")], args=["tok", 90_000],
                                client=p)  # type: ignore[arg-type]
            await scripts.begin(keys=[k.task("t"), k.lease("t"), k.events("t")],
                                args=["tok", 1000, 1, "p"], client=p)  # type: ignore[arg-type]
            renewed, begun = await p.execute(raise_on_error=False)
        assert renewed == 1
        assert isinstance(begun, OutOfMemoryError)
        assert await cluster.pttl(k.lease("t")) > 60_000
        assert await cluster.exists(k.task("t"), k.events("t")) == 0
        others = [port for port in redis_cluster.ports if port != owner]
        assert all("maxmemory\n0" in redis_cluster.cli(port, "CONFIG", "GET", "maxmemory")
                   for port in others)
    finally:
        redis_cluster.cli(owner, "CONFIG", "SET", "maxmemory", "0")


async def test_a_publish_from_a_script_reaches_a_subscriber_on_any_master(
        cluster: RedisClient, redis_cluster: RedisClusterServers) -> None:
    # PUBLISH (not SPUBLISH) is broadcast over the cluster bus: cancel.lua publishes from the
    # master of the deployment's keys; the processor's subscription may sit on any node.
    mine, other = keys_on_two_masters(redis_cluster)
    pubsub = cluster.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(other.cancel_channel)  # on the master of the *other* tag
    try:
        assert await pubsub.get_message(timeout=0.2) is None
        say = cluster.register_script("return redis.call('PUBLISH', ARGV[1], ARGV[2])")
        await say(keys=[mine.stats], args=[other.cancel_channel, "tsk_1"])
        message = None
        for _ in range(50):
            message = await pubsub.get_message(timeout=0.1)
            if message is not None:
                break
        assert message is not None and message["data"] == "tsk_1"
    finally:
        await pubsub.aclose()


async def test_blocking_reads_beyond_the_connections_wait_their_turn(
        redis_cluster_url: str) -> None:
    reader = redis_conn.connect_blocking(redis_cluster_url, max_connections=1,
                                         socket_timeout=5)
    stream = Keys("b" + uuid.uuid4().hex[:8]).events("t")
    try:
        replies = await asyncio.gather(*(reader.xread({stream: "0-0"}, block=50)
                                         for _ in range(4)))
        assert replies == [[]] * 4 or replies == [{}] * 4
    finally:
        await reader.aclose()


async def test_the_safety_check_reads_every_master(
        cluster: RedisClient, redis_cluster: RedisClusterServers) -> None:
    async def warnings() -> list[str]:
        with capture_logs() as captured:
            await redis_conn.warn_if_unsafe(cluster)
        return [e["event"] for e in captured]

    first, *others = redis_cluster.ports
    try:
        for port in others:
            redis_cluster.cli(port, "CONFIG", "SET", "appendonly", "yes")
        assert await warnings() == ["redis_no_persistence"]  # one master of three lacks it
        redis_cluster.cli(first, "CONFIG", "SET", "appendonly", "yes")
        assert await warnings() == []
    finally:
        for port in redis_cluster.ports:
            redis_cluster.cli(port, "CONFIG", "SET", "appendonly", "no")


async def test_an_unreachable_cluster_is_unavailable_not_a_bug() -> None:
    client = redis_conn.connect("redis+cluster://127.0.0.1:1")
    try:
        with pytest.raises(UNAVAILABLE):
            await client.ping()
    finally:
        await client.aclose()

"""Scrape-time figures read from Redis: what the queue holds now, and the batch counters
batch.lua keeps. Only cheap commands (LLEN, GET, ZCARD, HVALS of small hashes, XINFO GROUPS),
in one pipeline, so a scrape costs the same with ten tasks or a million."""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError

from shared import metrics
from shared.keys import TASKS_GROUP, Keys
from shared.redis_conn import RedisClient, hash_of
from shared.timeutil import now_ms


async def _group(redis: RedisClient, stream: str, group: str) -> int:
    """Entries of ``stream`` not yet handled by ``group``: never read, or read and pending."""
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except RedisError:
        return 0
    for g in groups:
        if g["name"] == group:
            return int(g.get("lag") or 0) + int(g.get("pending") or 0)
    return 0


async def refresh_queue(redis: RedisClient, keys: Keys) -> None:
    """The edge's gauges: queue depth by state, dead letters, live processors and
    coordinators."""
    k, now = keys, now_ms()
    async with redis.pipeline(transaction=False) as p:
        p.get(k.waiting_count)
        p.get(k.batch_backlog)
        p.hgetall(k.processors_inflight)
        p.hgetall(k.processors_free)
        p.zrangebyscore(k.processors_alive, now, "+inf")
        p.zcount(k.coordinators_alive, now, "+inf")
        p.zcard(k.dead_letters)
        open_len, backlog, inflight, free, procs, coords, dead = await p.execute()
    depth = metrics.queue_depth
    depth.labels("queued").set(await _group(redis, k.tasks_stream, TASKS_GROUP))
    depth.labels("waiting").set(int(open_len or 0))
    depth.labels("batched").set(int(backlog or 0))
    depth.labels("running").set(sum(int(inflight.get(p, 0)) for p in procs))
    metrics.dead_letters.set(dead)
    metrics.processors_alive.set(len(procs))
    metrics.processor_free_slots.set(sum(int(free.get(p, 0)) for p in procs))
    metrics.coordinators_alive.set(coords)


async def refresh_batches(redis: RedisClient, keys: Keys,
                          collector: metrics.BatchesFlushed) -> None:
    """The coordinator's cluster-wide batch counters."""
    collector.update(await hash_of(redis, keys.stats))

"""Redis clients: one per process, retried on connection errors with capped backoff."""

from __future__ import annotations

import asyncio
import random

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import logs
from shared.config import mask_url

log = logs.get("sluice.redis")

# Exceptions that mean "Redis is not reachable right now", as opposed to a bad command.
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


def connect(url: str, *, max_connections: int = 256) -> Redis:
    """A client whose commands retry briefly on connection errors (a Redis restart)."""
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=15,
        retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        max_connections=max_connections,
    )


async def wait_until_ready(redis: Redis, url: str, *, attempts: int = 60) -> None:
    """Ping with capped, jittered backoff; log every attempt; give up after ``attempts``."""
    delay = 0.1
    for attempt in range(1, attempts + 1):
        try:
            await redis.ping()
            return
        except UNAVAILABLE as exc:
            log.warning("redis_unreachable", url=mask_url(url), attempt=attempt,
                        retry_in_s=round(delay, 2), error=type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2) * random.uniform(0.8, 1.2)
    raise RuntimeError(f"redis at {mask_url(url)} unreachable after {attempts} attempts")


async def warn_if_unsafe(redis: Redis) -> None:
    """Say loudly when Redis may drop our data: evictions or no persistence."""
    try:
        policy = (await redis.config_get("maxmemory-policy")).get("maxmemory-policy")
        aof = (await redis.config_get("appendonly")).get("appendonly")
        save = (await redis.config_get("save")).get("save")
    except RedisError:
        return  # CONFIG is often disabled on managed Redis: nothing to check.
    if policy and policy != "noeviction":
        log.warning("redis_unsafe_eviction", maxmemory_policy=policy,
                    advice="set maxmemory-policy noeviction or queued tasks may be evicted")
    if aof != "yes" and not save:
        log.warning("redis_no_persistence",
                    advice="enable appendonly yes: a Redis restart loses every queued task")


async def hash_of(redis: Redis, key: str) -> dict[str, str]:
    """HGETALL with the types our clients really return (decode_responses=True)."""
    h: dict[str, str] = await redis.hgetall(key)  # type: ignore[assignment]
    return h

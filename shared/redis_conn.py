"""Redis clients: one per process, retried on connection errors with capped backoff.

A plain Redis or a Redis Cluster: ``redis+cluster://`` / ``rediss+cluster://`` in ``REDIS_URL``
(or ``REDIS_CLUSTER=true``, which :class:`shared.config.Common` turns into that scheme) selects
:class:`redis.asyncio.RedisCluster`. Every key of one deployment carries the hash tag
``{REDIS_PREFIX}`` (see :mod:`shared.keys`), so every script and multi-key command is
single-slot and works unchanged on a cluster; what still differs is kept here.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeAlias

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import logs
from shared.config import mask_url

log = logs.get("sluice.redis")

RedisClient: TypeAlias = Redis | RedisCluster

# Exceptions that mean "Redis is not reachable right now", as opposed to a bad command. On a
# cluster also: no reachable node (ClusterUnreachable, a ConnectionError), a slot without a
# master, CLUSTERDOWN during a failover, TRYAGAIN during a resharding: each is a refusal, never
# a half-run command, so the step may be run again.
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError,
               ClusterDownError, TryAgainError, SlotNotCoveredError)

# Redis is over ``maxmemory`` (policy noeviction) and refused a command that may grow it. A
# refused script did not run at all (shared/lua: a shebang without allow-oom is checked before
# its first command), so the step may be run again once memory is freed: wait, like an outage.
WAIT_OUT = (*UNAVAILABLE, OutOfMemoryError)


def wait_event(exc: BaseException) -> str:
    """The log event for an error of :data:`WAIT_OUT`: a full Redis is not an unreachable one."""
    return "redis_oom" if isinstance(exc, OutOfMemoryError) else "redis_unavailable"


# The URL schemes that select a Redis Cluster, and what redis-py is given instead.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def plain_url(url: str) -> str:
    """``url`` with a cluster scheme replaced by the one redis-py parses."""
    scheme, sep, rest = url.partition("://")
    return CLUSTER_SCHEMES.get(scheme.lower(), scheme) + sep + rest


def _options(max_connections: int, socket_timeout: float) -> dict[str, Any]:
    return {"decode_responses": True, "socket_connect_timeout": 2,
            "socket_timeout": socket_timeout, "health_check_interval": 15,
            "retry": Retry(NoBackoff(), retries=0), "max_connections": max_connections}


def connect(url: str, *, max_connections: int = 256, wait: bool = False) -> RedisClient:
    """A client that never re-sends a command by itself.

    redis-py retries on connection errors by default, but a script whose reply was lost may
    already have run (Redis died after writing its AOF, before answering): sending it again
    would append the same tokens twice or count an attempt twice. Our loops retry at the level
    where that is safe: a whole task step, restarted with a ``reset`` for clients.

    On a cluster the same holds (``retry`` with 0 retries also turns off the cluster client's
    own re-sends after a connection error); it still follows MOVED and ASK redirections, which
    answer a command that did not run. ``max_connections`` is per node there.

    ``wait``: when every connection is busy, a command waits for one instead of failing. The
    processor uses it to keep a small pool however many streams it runs: each connection costs
    about 20 KiB, and 1,000 in-flight tasks need far fewer than 1,000 at any moment.
    """
    options = _options(max_connections, 10)
    if is_cluster_url(url):
        cls = GatedCluster if wait else SluiceCluster
        return cls.from_url(plain_url(url), **options)
    if wait:
        return Redis.from_pool(BlockingConnectionPool.from_url(url, timeout=None, **options))
    return Redis.from_url(url, **options)


def connect_blocking(url: str, *, max_connections: int, socket_timeout: float) -> RedisClient:
    """A client for blocking reads (XREAD BLOCK) that waits for a free connection when all
    ``max_connections`` are busy, instead of raising. A plain Redis gets a
    ``BlockingConnectionPool``; a cluster client has no such pool (its nodes raise
    ``MaxConnectionsError``), so its commands queue on a semaphore of the same size."""
    options = _options(max_connections, socket_timeout)
    if is_cluster_url(url):
        return GatedCluster.from_url(plain_url(url), **options)
    del options["retry"]  # reads only: a re-sent XREAD does no harm
    return Redis.from_pool(BlockingConnectionPool.from_url(url, timeout=None, **options))


class ClusterUnreachable(RedisConnectionError):
    """No node of the cluster answered while (re)reading its slot map, or the slots are not
    all covered: redis-py says so with a bare ``RedisClusterException``, which also stands for
    bugs (a cross-slot command), so it is told apart here, where it can be."""


class SluiceCluster(RedisCluster):
    """redis-py's cluster client with two differences that keep our code the same on both:

    - A cluster pipeline takes scripts. redis-py blocks EVALSHA in a ``ClusterPipeline`` (its
      plain ``Pipeline`` loads the scripts it holds before sending them; the cluster one has no
      such step, and a script cache is per node and lost by a failover), so there the script's
      text goes with EVAL, which Redis caches by SHA1 all the same. Our one script sent in a
      pipeline is ``renew.lua`` (every lease renewed in one round trip, processor/leases.py).
    - A cluster with no reachable node raises :class:`ClusterUnreachable`, one of
      :data:`UNAVAILABLE`, so our loops wait it out as they wait out a plain Redis restart.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.script_texts: dict[str, str] = {}

    def register_script(self, script: Any) -> AsyncScript:  # type: ignore[override]
        registered = AsyncScript(self, script)
        self.script_texts[registered.sha] = script
        return registered

    def pipeline(self, transaction: Any | None = None,
                 shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # raises, as redis-py does
        return _ScriptPipeline(self, transaction, self.script_texts)  # type: ignore[abstract]

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise ClusterUnreachable(str(exc)) from exc


class _ScriptPipeline(ClusterPipeline):
    def __init__(self, client: RedisCluster, transaction: Any | None,
                 script_texts: dict[str, str]) -> None:
        super().__init__(client, transaction)
        self.script_texts = script_texts

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:  # type: ignore[override]
        text = self.script_texts.get(sha)
        if text is None:
            raise RedisClusterException("EVALSHA in a cluster pipeline: the script was not "
                                        "registered with this client")
        self.execute_command("EVAL", text, numkeys, *keys_and_args)
        return _Queued(self)


class _Queued:
    """What ``await script(..., client=pipeline)`` gets back: the pipeline, its queue intact.
    Awaiting a ``ClusterPipeline`` itself re-initializes it, which empties its queue: every
    script but the last of a loop would silently never be sent."""

    def __init__(self, pipe: ClusterPipeline) -> None:
        self._pipe = pipe

    def __await__(self) -> Generator[None, None, ClusterPipeline]:
        yield from ()
        return self._pipe


class GatedCluster(SluiceCluster):
    """A cluster client that runs at most ``max_connections`` commands at once, so a node's
    connection list (of that size) is never exhausted: extra commands wait their turn."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = asyncio.Semaphore(kwargs.get("max_connections", 100))

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._gate:
            return await super().execute_command(*args, **kwargs)


async def wait_until_ready(redis: RedisClient, url: str, *, attempts: int = 60) -> None:
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


async def _config(redis: RedisClient, name: str) -> list[str | None]:
    """One CONFIG value, from the server or from every master of a cluster."""
    if isinstance(redis, RedisCluster):
        replies = [await redis.config_get(name, target_nodes=node)
                   for node in redis.get_primaries()]
    else:
        replies = [await redis.config_get(name)]
    return [reply.get(name) for reply in replies]


async def warn_if_unsafe(redis: RedisClient) -> None:
    """Say loudly when Redis may drop our data: evictions or no persistence (on a cluster,
    when any master may)."""
    try:
        policies = await _config(redis, "maxmemory-policy")
        aofs = await _config(redis, "appendonly")
        saves = await _config(redis, "save")
    except (RedisError, RedisClusterException):
        return  # CONFIG is often disabled on managed Redis: nothing to check.
    if any(p and p != "noeviction" for p in policies):
        log.warning("redis_unsafe_eviction",
                    maxmemory_policy=next(p for p in policies if p and p != "noeviction"),
                    advice="set maxmemory-policy noeviction or queued tasks may be evicted")
    if any(aof != "yes" and not save for aof, save in zip(aofs, saves, strict=True)):
        log.warning("redis_no_persistence",
                    advice="enable appendonly yes: a Redis restart loses every queued task")


@dataclass(frozen=True, slots=True)
class Memory:
    used: int   # bytes, as Redis counts them against maxmemory
    limit: int  # maxmemory in bytes; 0: no limit

    @property
    def full(self) -> bool:
        """Redis refuses every command that may grow memory (policy noeviction) past this."""
        return 0 < self.limit < self.used


async def memory(redis: RedisClient, key: str) -> Memory:
    """Memory of the server holding ``key``: on a cluster the master of its slot, which holds
    every key of the deployment (they share one hash tag). ``used`` is what Redis compares with
    maxmemory: ``used_memory`` less the replication and AOF buffers it leaves out."""
    if isinstance(redis, RedisCluster):
        info = await redis.info("memory", target_nodes=redis.get_node_from_key(key))
    else:
        info = await redis.info("memory")
    used = int(info["used_memory"]) - int(info.get("mem_not_counted_for_evict") or 0)
    return Memory(used, int(info.get("maxmemory") or 0))


async def hash_of(redis: RedisClient, key: str) -> dict[str, str]:
    """HGETALL with the types our clients really return (decode_responses=True)."""
    h: dict[str, str] = await redis.hgetall(key)  # type: ignore[assignment]
    return h

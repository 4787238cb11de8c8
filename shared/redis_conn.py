"""Redis clients: one per process, retried on connection errors with capped backoff.

A plain Redis or a Redis Cluster: ``redis+cluster://`` / ``rediss+cluster://`` in ``REDIS_URL``
(or ``REDIS_CLUSTER=true``, which :class:`shared.config.Common` turns into that scheme) selects
:class:`redis.asyncio.RedisCluster`. Every key of one deployment carries the hash tag
``{REDIS_PREFIX}`` (see :mod:`shared.keys`), so every script and multi-key command is
single-slot and works unchanged on a cluster; what still differs is kept here.

Where redis-py is overridden for speed, each override has a switch, ``REDIS_OVERRIDES``
(read once into each service's settings, :class:`shared.config.Common`, which hands it to
:func:`connect`): a comma-separated list where ``-name`` turns one off
(``REDIS_OVERRIDES=-lane,-pack``), ``none`` turns all off; unset, all are on (as for a client
made without it). Off, redis-py's own path is used:

- ``pool``: :class:`WaitingPool` takes and gives back a connection without redis-py's lock
  and records (:class:`shared.redis_fence.QuickPool`; off: redis-py's ``get_connection`` and
  ``release``; the waiting turns stay, they use its public methods only).
- ``pack``: commands packed by hiredis alone (in shared/redis_fence.py: ``_QuickPacker``).
- ``lane``: a coalescer's groups written the moment they form on a held connection
  (:class:`shared.redis_fence.Lane`; off: they wait for the round trip in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Any, TypeAlias

from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterDownError,
    MaxConnectionsError,
    OutOfMemoryError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from shared import logs
from shared.config import RedisOverrides, Secret, mask_url
from shared.redis_fence import QuickPool, connection_class

# A Redis URL as settings hold it (its password hidden from repr), or as tests write it.
Url = str | Secret[str]


def url_text(url: Url) -> str:
    return url.get() if isinstance(url, Secret) else url

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


# How long a command waits for Redis's answer before it fails (the edge: EDGE_REDIS_TIMEOUT_S).
SOCKET_TIMEOUT_S = 10.0


def _options(max_connections: int, socket_timeout: float | None,
             keepalive: dict[int, int] | None = None) -> dict[str, Any]:
    # Maintenance notifications (Redis Enterprise's hitless upgrades) off: while redis-py 8
    # has them on ("auto"), its pool skips the check that replaces a connection the server
    # closed, so after a Redis restart every pooled connection fails once, and a task whose
    # step drew one would spend a provider attempt on it (tests/integration/
    # test_redis_restart_pool.py).
    return {"decode_responses": True, "socket_connect_timeout": 2,
            "socket_timeout": socket_timeout, "health_check_interval": 15,
            "retry": Retry(NoBackoff(), retries=0), "max_connections": max_connections,
            "maint_notifications_config": MaintNotificationsConfig(enabled=False),
            **({"socket_keepalive": True, "socket_keepalive_options": keepalive}
               if keepalive else {})}


def _pool(url: str, overrides: RedisOverrides, **options: Any) -> WaitingPool:
    """A :class:`WaitingPool` for ``url`` with the overrides of ``overrides`` on: the pool's
    own, and the connection class's for TCP and TLS (a Unix socket keeps its own)."""
    pool = _pool_class(overrides.on).from_url(url, overrides=overrides, **options)
    if pool.connection_class in (Connection, SSLConnection):
        pool.connection_class = connection_class(pool.connection_class, overrides.on)
    return pool


def overrides_of(redis: RedisClient) -> RedisOverrides:
    """The overrides a client of :func:`connect` was made with (a cluster's: the default)."""
    pool = getattr(redis, "connection_pool", None)
    return pool.overrides if isinstance(pool, WaitingPool) else RedisOverrides()


# How long a command waits for a free connection of its pool before giving up.
POOL_WAIT_S = 5.0


class PoolExhausted(MaxConnectionsError):
    """Every connection of the pool stayed busy for the whole wait: Redis may be healthy, this
    process asks more of it at once than its pool holds. One of :data:`UNAVAILABLE` (the
    command was never sent, so it may be run again); its name tells the logs which it was."""


class WaitingPool(ConnectionPool):
    """redis-py's pool, where a command waits its turn when every connection is busy (up to
    ``timeout`` s, None: as long as it takes) and a timed-out wait raises
    :class:`PoolExhausted` instead of the ``ConnectionError`` that also stands for "Redis
    does not answer".

    Not redis-py's ``BlockingConnectionPool``: it takes a condition, a timeout and a lock on
    every command, even with connections to spare, which made a submit cost 0.05 ms more
    (a third of the edge's CPU per submit, by py-spy under ``make bench``). Here the turns are
    a semaphore, which hands them out first come, first served and costs nothing until the
    pool is really full."""

    def __init__(self, *, timeout: float | None, max_connections: int,
                 overrides: RedisOverrides | None = None, **kwargs: Any) -> None:
        super().__init__(max_connections=max_connections, **kwargs)
        self.timeout = timeout
        self.overrides = RedisOverrides() if overrides is None else overrides
        self._turns = asyncio.Semaphore(max_connections)
        self.holding: set[Any] = set()  # connections handed out with a turn

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._turns.locked():
            try:
                async with asyncio.timeout(self.timeout):
                    await self._turns.acquire()
            except TimeoutError:
                raise PoolExhausted(f"no free Redis connection within {self.timeout} s "
                                    f"(pool of {self.max_connections})") from None
        else:
            await self._turns.acquire()  # free: returns at once
        try:
            connection = await super().get_connection(*args, **kwargs)
        except BaseException:
            # Not handed out: a failed connect gave the connection back (but not its turn).
            self._turns.release()
            raise
        self.holding.add(connection)
        return connection

    async def release(self, connection: Any) -> None:
        try:
            await super().release(connection)
        finally:
            # Once per hand-out: redis-py may call release again (in the background, after a
            # cancelled one), or for a connection whose connect failed in get_connection.
            if connection in self.holding:
                self.holding.discard(connection)
                self._turns.release()


def connect(redis_url: Url, *, max_connections: int = 256,
            wait_s: float | None = POOL_WAIT_S,
            overrides: RedisOverrides | None = None,
            socket_timeout: float | None = SOCKET_TIMEOUT_S,
            keepalive: dict[int, int] | None = None) -> RedisClient:
    """A client that never re-sends a command by itself.

    redis-py retries on connection errors by default, but a script whose reply was lost may
    already have run (Redis died after writing its AOF, before answering): sending it again
    would append the same tokens twice or count an attempt twice. Our loops retry at the level
    where that is safe: a whole task step, restarted with a ``reset`` for clients.

    On a cluster the same holds (``retry`` with 0 retries also turns off the cluster client's
    own re-sends after a connection error); it still follows MOVED and ASK redirections, which
    answer a command that did not run. ``max_connections`` is per node there.

    When every connection is busy, a command waits for one (redis-py's default pool raises at
    once, which turned a burst of requests into 503s with Redis healthy): ``wait_s`` at most,
    then :class:`PoolExhausted`; ``None`` waits as long as it takes. The processor waits so to
    keep a small pool however many streams it runs: each connection costs about 20 KiB, and
    1,000 in-flight tasks need far fewer than 1,000 at any moment.

    ``overrides``: which of our overrides of redis-py it uses (a service's REDIS_OVERRIDES,
    ``settings.common.redis_overrides``; default: all of them).
    ``socket_timeout``: how long a command waits for Redis's answer before it fails (None:
    as long as it takes; see :mod:`shared.redis_watch`, which bounds it otherwise).
    ``keepalive``: TCP keepalive on, with these socket options.
    """
    options = _options(max_connections, socket_timeout, keepalive)
    url = url_text(redis_url)
    if is_cluster_url(url):
        return GatedCluster.from_url(plain_url(url), wait_s=wait_s, **options)
    overrides = RedisOverrides() if overrides is None else overrides
    return Redis.from_pool(_pool(url, overrides, timeout=wait_s, **options))


def connect_blocking(redis_url: Url, *, max_connections: int, socket_timeout: float,
                     overrides: RedisOverrides | None = None) -> RedisClient:
    """A client for blocking reads (XREAD BLOCK) that waits for a free connection when all
    ``max_connections`` are busy, as long as it takes. A plain Redis gets a waiting pool; a
    cluster client has no such pool (its nodes raise ``MaxConnectionsError``), so its commands
    queue on a semaphore of the same size. ``overrides``: as for :func:`connect`."""
    options = _options(max_connections, socket_timeout)
    url = url_text(redis_url)
    if is_cluster_url(url):
        return GatedCluster.from_url(plain_url(url), wait_s=None, **options)
    del options["retry"]  # reads only: a re-sent XREAD does no harm
    overrides = RedisOverrides() if overrides is None else overrides
    return Redis.from_pool(_pool(url, overrides, timeout=None, **options))


class ClusterUnreachable(RedisConnectionError):
    """No node of the cluster answered while (re)reading its slot map, or the slots are not
    all covered: redis-py says so with a bare ``RedisClusterException``, which also stands for
    bugs (a cross-slot command), so it is told apart here, where it can be."""


class SluiceCluster(RedisCluster):
    """redis-py's cluster client with two differences that keep our code the same on both:

    - A cluster pipeline takes scripts. redis-py blocks EVALSHA in a ``ClusterPipeline`` (its
      plain ``Pipeline`` loads the scripts it holds before sending them; the cluster one has no
      such step, and a script cache is per node and lost by a failover), so there the script's
      text goes with EVAL, which Redis caches by SHA1 all the same. Our scripts sent in a
      pipeline are ``renew.lua`` (every lease renewed in one round trip, processor/leases.py)
      and the calls coalesced by ``shared/coalesce.py`` (the processor's emits).
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

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        client = self.cluster_client
        if isinstance(client, GatedCluster):  # a pipeline holds a node's connection too
            async with client.turn():
                return await super().execute(*args, **kwargs)
        return await super().execute(*args, **kwargs)


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
    """A cluster client that runs at most ``max_connections`` commands (or pipelines) at once,
    so a node's connection list (of that size) is never exhausted: extra commands wait their
    turn, ``wait_s`` at most (None: as long as it takes), then :class:`PoolExhausted`."""

    def __init__(self, *args: Any, wait_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max = kwargs.get("max_connections", 100)
        self._gate = asyncio.Semaphore(self._max)
        self._wait_s = wait_s

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._wait_s):
                await self._gate.acquire()
        except TimeoutError:
            raise PoolExhausted(f"no free Redis connection within {self._wait_s} s "
                                f"({self._max} commands at once)") from None
        try:
            yield
        finally:
            self._gate.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.turn():
            return await super().execute_command(*args, **kwargs)


@functools.cache
def _pool_class(on: frozenset[str]) -> type[WaitingPool]:
    """:class:`WaitingPool`, its turns before redis-py's pool or (``pool`` on) before
    :class:`shared.redis_fence.QuickPool`."""
    if "pool" not in on:
        return WaitingPool
    return type("QuickWaitingPool", (WaitingPool, QuickPool), {})


class RedisUnreachable(RuntimeError):
    """Redis did not answer a ping in all of :func:`wait_until_ready`'s attempts."""


async def wait_until_ready(redis: RedisClient, redis_url: Url, *, attempts: int = 60) -> None:
    """Ping with capped, jittered backoff; log every attempt; raise :class:`RedisUnreachable`
    after ``attempts``."""
    url, delay = url_text(redis_url), 0.1
    for attempt in range(1, attempts + 1):
        try:
            await redis.ping()
            return
        except UNAVAILABLE as exc:
            log.warning("redis_unreachable", url=mask_url(url), attempt=attempt,
                        retry_in_s=round(delay, 2), error=type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2) * random.uniform(0.8, 1.2)
    raise RedisUnreachable(f"redis at {mask_url(url)} unreachable after {attempts} attempts")


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

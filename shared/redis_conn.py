"""Redis clients: one per process, retried on connection errors with capped backoff.

A plain Redis or a Redis Cluster: ``redis+cluster://`` / ``rediss+cluster://`` in ``REDIS_URL``
(or ``REDIS_CLUSTER=true``, which :class:`shared.config.Common` turns into that scheme) selects
:class:`redis.asyncio.RedisCluster`. Every key of one deployment carries the hash tag
``{REDIS_PREFIX}`` (see :mod:`shared.keys`), so every script and multi-key command is
single-slot and works unchanged on a cluster; what still differs is kept here.

Where redis-py is overridden for speed, each override has a switch, ``REDIS_OVERRIDES``
(read once by :func:`shared.config.redis_overrides`): a comma-separated list where ``-name``
turns one off (``REDIS_OVERRIDES=-lane,-watch``), ``none`` turns all off; unset, all are on.
Off, redis-py's own path is used:

- ``pool``: :class:`WaitingPool` takes and gives back a connection without redis-py's lock
  and records (off: its ``get_connection`` and ``release``; the waiting turns stay).
- ``pack``: :class:`_QuickPacker`, commands packed by hiredis alone.
- ``write``: :class:`_QuickWrite`, a write without a task and a timer.
- ``watch``: :class:`_QuickRead`, replies awaited under one timer per loop (:class:`_ReadWatch`).
- ``evalsha_all``: :func:`evalsha_all` for a coalescer's calls (off: a redis-py pipeline).
- ``lane``: :class:`Lane`, a coalescer's groups written the moment they form (off: they wait
  for the round trip in flight).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import math
import random
import weakref
from collections.abc import AsyncIterator, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import hiredis
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.exceptions import (
    ClusterDownError,
    DataError,
    MaxConnectionsError,
    OutOfMemoryError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from shared import config, logs
from shared.config import RedisOverrides, Secret, mask_url

# A Redis URL as settings hold it (its password hidden from repr), or as tests write it.
Url = str | Secret[str]


def _text(url: Url) -> str:
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


def _options(max_connections: int, socket_timeout: float) -> dict[str, Any]:
    # Maintenance notifications (Redis Enterprise's hitless upgrades) off: while redis-py 8
    # has them on ("auto"), its pool skips the check that replaces a connection the server
    # closed, so after a Redis restart every pooled connection fails once, and a task whose
    # step drew one would spend a provider attempt on it (tests/integration/
    # test_redis_restart_pool.py).
    return {"decode_responses": True, "socket_connect_timeout": 2,
            "socket_timeout": socket_timeout, "health_check_interval": 15,
            "retry": Retry(NoBackoff(), retries=0), "max_connections": max_connections,
            "maint_notifications_config": MaintNotificationsConfig(enabled=False)}


class _QuickWrite:
    """A connection that writes a command without a timer or a task when it need not wait.

    redis-py bounds every write with ``asyncio.wait_for`` (SOCKET_TIMEOUT), which on Python
    3.11 wraps the write in a new task and a timer: two more loop turns per command, every
    command of every service (5 of a GET's 38 us of client CPU, measured with uvloop). A
    write only waits when the socket's
    buffer is backed up (Redis not reading); the bound is kept for exactly that case. Anything
    unusual (not connected, a closing transport) goes through redis-py's own path."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        conn: Any = self
        if not conn.is_connected or conn._writer is None:
            return await super().send_packed_command(command, check_health)  # type: ignore[misc]
        if check_health:
            await conn.check_health()  # a ping only when HEALTH_CHECK_INTERVAL is due
        writer = conn._writer
        if writer is None or writer.transport.is_closing():
            return await super().send_packed_command(command, False)  # type: ignore[misc]
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        try:
            writer.writelines(command)
            if writer.transport.get_write_buffer_size() == 0:
                await writer.drain()  # all sent: returns at once (nothing paused)
            else:
                async with asyncio.timeout(conn.socket_timeout):
                    await writer.drain()
        except TimeoutError:
            await conn.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as e:
            await conn.disconnect(nowait=True)
            raise RedisConnectionError(f"Error {e.errno or 'UNKNOWN'} while writing to socket. "
                                       f"{e.strerror or e}.") from e
        except BaseException:
            # A write cut midway leaves the connection unusable, as redis-py says.
            await conn.disconnect(nowait=True)
            raise


class _ReadWatch:
    """The replies awaited on one event loop, each with the loop time it is due by; one timer
    looks every CHECK_S while any is awaited, and cuts the connection of one that is late."""

    CHECK_S = 0.25

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.due: dict[Any, float] = {}  # connection -> loop time its reply is due by
        self.handle: asyncio.TimerHandle | None = None

    def start(self, conn: Any, seconds: float) -> None:
        self.due[conn] = self.loop.time() + seconds
        if self.handle is None:
            self.handle = self.loop.call_later(self.CHECK_S, self._check)

    def _check(self) -> None:
        self.handle, now = None, self.loop.time()
        late = [conn for conn, due in self.due.items() if due <= now]
        for conn in late:
            del self.due[conn]
            conn.read_cut = True
            if conn._writer is not None:
                conn._writer.transport.abort()  # the read under way fails at once
        if self.due:
            self.handle = self.loop.call_later(self.CHECK_S, self._check)


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _ReadWatch] = (
    weakref.WeakKeyDictionary())


def _read_watch() -> _ReadWatch:
    loop = asyncio.get_running_loop()
    watch = _watches.get(loop)
    if watch is None:
        watch = _watches[loop] = _ReadWatch(loop)
    return watch


class _QuickRead:
    """A connection that awaits a reply without a timer of its own.

    redis-py bounds every read with ``asyncio.timeout`` (SOCKET_TIMEOUT): a Timeout object and
    a timer scheduled and cancelled per reply, 3-7% of each service's CPU in the e2e bench's
    profiles. The bound is kept by :class:`_ReadWatch`, one timer per loop: a reply later than
    SOCKET_TIMEOUT (at most CHECK_S more) cuts the connection, and the read fails as redis-py's
    would, with a TimeoutError and the connection dropped. Reads with a timeout of their own
    (pub/sub) go through redis-py's own path."""

    read_cut = False  # set by the watch when it cut this connection's read for being late

    async def read_response(self, disable_decoding: bool = False,
                            timeout: float | None = None,  # noqa: ASYNC109 (redis-py's own)
                            *, disconnect_on_error: bool = True,
                            push_request: bool | None = False) -> Any:
        conn: Any = self
        base: Any = super()
        if timeout is not None or conn.socket_timeout is None:
            return await base.read_response(disable_decoding, timeout,
                                            disconnect_on_error=disconnect_on_error,
                                            push_request=push_request)
        watch = _read_watch()
        self.read_cut = False
        watch.start(self, conn.socket_timeout)
        try:
            # math.inf: redis-py's "no timer" (its errors, health check and replies as ever)
            return await base.read_response(disable_decoding, math.inf,
                                            disconnect_on_error=disconnect_on_error,
                                            push_request=push_request)
        except Exception as exc:
            if self.read_cut:
                self.read_cut = False
                await conn.disconnect(nowait=True)
                raise RedisTimeoutError(f"Timeout reading from {conn._host_error()}") from exc
            raise
        finally:
            watch.due.pop(self, None)


class _QuickPacker(HiredisRespSerializer):
    """Commands packed by hiredis alone.

    redis-py's packer looks through the arguments for memoryviews, then encodes each in Python
    (``Encoder.encode``) before hiredis packs them: 5-7% of the processor's CPU in the e2e
    bench's profile, most of it for arguments hiredis takes as they are (str as UTF-8, int,
    float as repr, bytes). Anything else (bool, None, bytearray: a TypeError from hiredis)
    goes through redis-py's own packer, which packs it or raises its DataError."""

    def pack(self, *args: Any) -> list[bytes]:
        first = args[0]
        # As redis-py does: a command name with a space ('XINFO GROUPS') is several arguments.
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return super().pack(*args)  # type: ignore[no-any-return]


class _QuickPack:
    """A connection with :class:`_QuickPacker`, when redis-py would use hiredis and strings
    are UTF-8 (strict), as hiredis encodes them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        conn: Any = self
        enc = conn.encoder
        if (isinstance(conn._command_packer, HiredisRespSerializer)
                and codecs.lookup(enc.encoding).name == "utf-8"
                and enc.encoding_errors == "strict"):
            conn._command_packer = _QuickPacker(conn._pack_command_python, enc.encode)


_MIXINS = (("pack", _QuickPack), ("watch", _QuickRead), ("write", _QuickWrite))


@functools.cache
def _connection_class(base: type[Connection], on: frozenset[str]) -> type[Connection]:
    """``base`` with the connection overrides switched on in ``on``."""
    mixins = tuple(mixin for name, mixin in _MIXINS if name in on)
    if not mixins:
        return base
    return type(f"Quick{base.__name__}", (*mixins, base), {})


QuickConnection = _connection_class(Connection, RedisOverrides().on)  # every one on


def _quick_pool(pool: ConnectionPool, overrides: RedisOverrides) -> ConnectionPool:
    """``pool`` with our connection class, for TCP and TLS (a Unix socket keeps its own)."""
    if pool.connection_class in (Connection, SSLConnection):
        pool.connection_class = _connection_class(pool.connection_class, overrides.on)
    return pool


def overrides_of(redis: RedisClient) -> RedisOverrides:
    """The overrides a client of :func:`connect` was made with (a cluster's: the process's)."""
    pool = getattr(redis, "connection_pool", None)
    return pool.overrides if isinstance(pool, WaitingPool) else config.redis_overrides()


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
        self.overrides = config.redis_overrides() if overrides is None else overrides
        self._quick = "pool" in self.overrides  # else redis-py's own get_connection, release
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
            if not self._quick:
                connection = await super().get_connection(*args, **kwargs)
            else:
                connection = await self._take()
                try:
                    await self.ensure_connection(connection)
                except BaseException:
                    await self._give_back(connection)
                    raise
        except BaseException:
            # Not handed out: a failed connect gave the connection back (but not its turn).
            self._turns.release()
            raise
        self.holding.add(connection)
        return connection

    # redis-py's own get_connection and release take its lock and await four observability
    # records (no-ops unless its OpenTelemetry export is on: it is not) and an event dispatch
    # (for credential providers: none here) per command, 8 of a GET's 33 us of client CPU. On
    # one event loop nothing awaits between taking a connection and marking it in use, so the
    # lock is only waited for while someone holds it (the pool's disconnect, across awaits).
    async def _take(self) -> Any:
        if self._lock.locked():
            async with self._lock:
                return self.get_available_connection()
        return self.get_available_connection()

    async def _give_back(self, connection: Any) -> None:
        if self._lock.locked():
            async with self._lock:
                self._in_use_connections.remove(connection)
        else:
            self._in_use_connections.remove(connection)
        try:
            if connection.should_reconnect():
                await connection.disconnect()
        except BaseException:
            connection._force_disconnect()  # not known to be closed: reuse reconnects
            raise
        finally:
            self._available_connections.append(connection)  # even if cancelled meanwhile

    async def release(self, connection: Any) -> None:
        try:
            if self._quick:
                await self._give_back(connection)
            else:
                await super().release(connection)
        finally:
            # Once per hand-out: redis-py may call release again (in the background, after a
            # cancelled one), or for a connection whose connect failed in get_connection.
            if connection in self.holding:
                self.holding.discard(connection)
                self._turns.release()


async def evalsha_all(redis: Redis, sha: str,
                      calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
    """EVALSHA of one script for each ``(keys, args)`` of ``calls`` in one round trip: each
    call's reply, or its error (a ResponseError such as NoScriptError), in its place.

    What ``pipeline(transaction=False).execute(raise_on_error=False)`` sends and answers,
    without redis-py 8's per-pipeline work that a script call never needs (HIMPORT fieldsets,
    observability records, the retry wrapper: retries are off) or its per-command
    bookkeeping: 2.4 of its 6.5 us per call, an edge's submits coming 50 at a time (measured
    in process). A failure while the replies are read drops the connection, as redis-py's
    pipeline does: the rest of them would still be on its socket."""
    pool = redis.connection_pool
    conn = await pool.get_connection()
    try:
        packed, unsent = _pack_each(
            conn, [("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls])
        if not packed:
            return [unsent[i] for i in range(len(calls))]
        await conn.send_packed_command(packed)
        return _in_place(await _replies(conn, len(calls) - len(unsent)), unsent)
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)


def _pack_each(conn: Any, commands: Sequence[tuple[Any, ...]]
               ) -> tuple[list[bytes], dict[int, Exception]]:
    """The commands packed one by one: one that cannot be (an argument Redis cannot take,
    such as None or a bool: redis-py's DataError) is left out with its error, by its index,
    so it fails alone and the others of its group are still sent."""
    packed: list[bytes] = []
    unsent: dict[int, Exception] = {}
    for i, command in enumerate(commands):
        try:
            packed.extend(conn.pack_command(*command))
        except DataError as exc:
            unsent[i] = exc
    return packed, unsent


def _in_place(replies: list[Any], unsent: dict[int, Exception]) -> list[Any]:
    """The replies of the commands sent, with each unsent command's error in its place."""
    if not unsent:
        return replies
    sent = iter(replies)
    return [unsent[i] if i in unsent else next(sent)
            for i in range(len(replies) + len(unsent))]


async def _replies(conn: Any, count: int) -> list[Any]:
    """The next ``count`` replies on ``conn``, an error reply as its ResponseError."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await conn.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies


async def _as_is(replies: list[Any]) -> list[Any]:
    return replies


class Lane:
    """A pooled connection held for groups of calls that go out the moment they are formed.

    ``send`` writes at once, from the caller's own step: nothing awaits between forming a
    group and writing it, so Redis runs it while this process goes on with the work that
    came in with it. (A task or a pool wait would first let that work run, and the group
    would go out after it, with Redis and the process taking turns instead of working
    together.) Groups on the lane are answered in the order written; each reader takes its
    group's replies once the group before it has taken its own.

    The lane is held from the pool once first needed. It is not ready while it connects,
    while a write is still buffered (Redis not reading: callers take the path that waits),
    once its connection failed, closes or has seen EOF (Redis closed it: a restart), or after
    lying idle longer than the health-check interval; then, at once, it gets a connection the
    pool has checked. A failed read drops the connection,
    so the groups written behind it fail too (as a failed pipeline's calls do, any of which
    may have run), and none reads another's replies."""

    def __init__(self, redis: Redis) -> None:
        self._pool = redis.connection_pool
        self._conn: Any = None
        self._opening: asyncio.Task[None] | None = None
        self._last: asyncio.Future[None] | None = None  # the last group's replies taken
        self._readers: set[asyncio.Task[list[Any]]] = set()  # kept till done
        self._used_at = 0.0  # loop time of the last write (or of getting the connection)

    def ready(self) -> bool:
        """Whether ``send`` may write now; if the lane has no live connection, it gets one."""
        conn = self._conn
        loop = asyncio.get_running_loop()
        if self._live(conn, loop.time()):
            # Redis not reading: the callers take the path that waits, on this connection.
            return bool(conn._writer.transport.get_write_buffer_size() == 0)
        if self._opening is None or self._opening.done():
            self._opening = loop.create_task(self._open())
        return False

    def _live(self, conn: Any, now: float) -> bool:
        """Whether a group written on ``conn`` now can be answered. Not when Redis closed it:
        after a restart (or its ``timeout``) the socket has seen EOF, yet its transport is not
        closing (a half-closed TCP connection: asyncio's streams keep the writing side open),
        so a group written there fails whole with "Connection closed by server", Redis
        already back. Nor when its transport is closing, or it was cut. Nor after idling past
        HEALTH_CHECK_INTERVAL: Redis may have closed it unseen (the EOF still on its way); the
        pool checks a connection before handing it out, as for a command."""
        if conn is None or not conn.is_connected:
            return False
        writer, reader = conn._writer, conn._reader
        if writer is None or reader is None or writer.transport.is_closing():
            return False
        if reader.at_eof() or reader.exception() is not None:
            return False
        return bool(now - self._used_at < conn.health_check_interval)

    async def _open(self) -> None:
        old, self._conn = self._conn, None
        try:
            if old is not None:
                if self._last is not None:
                    # Not back to the pool while a group written on it is unread: the next
                    # user would read that group's replies as its own.
                    await asyncio.wait((self._last,))
                await self._pool.release(old)
            self._conn = await self._pool.get_connection()
            self._used_at = asyncio.get_running_loop().time()
        except Exception as exc:  # Redis is down: the callers' own path reports it
            log.debug("lane_not_opened", error=repr(exc))

    def send(self, commands: list[tuple[Any, ...]]) -> asyncio.Task[list[Any]]:
        """Write ``commands`` now (only when :meth:`ready`); the task gives each one's reply,
        or its error (a ResponseError; a DataError for one that could not be packed, which
        alone is not written), in its place."""
        conn = self._conn
        loop = asyncio.get_running_loop()
        packed, unsent = _pack_each(conn, commands)
        if not packed:  # nothing to write, nothing to read
            return loop.create_task(_as_is([unsent[i] for i in range(len(commands))]))
        conn._writer.writelines(packed)
        self._used_at = loop.time()
        before, mine = self._last, loop.create_future()
        self._last = mine
        reader = loop.create_task(self._read(conn, len(commands) - len(unsent), unsent,
                                             before, mine))
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        return reader

    async def _read(self, conn: Any, count: int, unsent: dict[int, Exception],
                    before: asyncio.Future[None] | None,
                    mine: asyncio.Future[None]) -> list[Any]:
        try:
            if before is not None:
                await asyncio.wait((before,))  # not cancelled with this reader, if it is
            if not conn.is_connected:  # a group before this one failed and dropped it
                raise RedisConnectionError("the lane's connection was lost")
            return _in_place(await _replies(conn, count), unsent)
        except BaseException:
            conn._force_disconnect()  # its other replies are unread: nobody may take them
            raise
        finally:
            mine.set_result(None)


def connect(redis_url: Url, *, max_connections: int = 256,
            wait_s: float | None = POOL_WAIT_S,
            overrides: RedisOverrides | None = None) -> RedisClient:
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

    ``overrides``: which of our overrides of redis-py it uses (default: REDIS_OVERRIDES).
    """
    options = _options(max_connections, 10)
    url = _text(redis_url)
    if is_cluster_url(url):
        return GatedCluster.from_url(plain_url(url), wait_s=wait_s, **options)
    overrides = config.redis_overrides() if overrides is None else overrides
    return Redis.from_pool(_quick_pool(WaitingPool.from_url(
        url, timeout=wait_s, overrides=overrides, **options), overrides))


def connect_blocking(redis_url: Url, *, max_connections: int,
                     socket_timeout: float) -> RedisClient:
    """A client for blocking reads (XREAD BLOCK) that waits for a free connection when all
    ``max_connections`` are busy, as long as it takes. A plain Redis gets a waiting pool; a
    cluster client has no such pool (its nodes raise ``MaxConnectionsError``), so its commands
    queue on a semaphore of the same size."""
    options = _options(max_connections, socket_timeout)
    url = _text(redis_url)
    if is_cluster_url(url):
        return GatedCluster.from_url(plain_url(url), wait_s=None, **options)
    del options["retry"]  # reads only: a re-sent XREAD does no harm
    overrides = config.redis_overrides()
    return Redis.from_pool(_quick_pool(WaitingPool.from_url(
        url, timeout=None, overrides=overrides, **options), overrides))


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


async def wait_until_ready(redis: RedisClient, redis_url: Url, *, attempts: int = 60) -> None:
    """Ping with capped, jittered backoff; log every attempt; give up after ``attempts``."""
    url, delay = _text(redis_url), 0.1
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

"""Where Sluice overrides redis-py's internals for speed: fenced here, each behind its switch.

Each override has a switch in ``REDIS_OVERRIDES`` (:class:`shared.config.RedisOverrides`,
described in ``shared/redis_conn.py``); switched off, redis-py's own path is used. Each stays
only while it is worth at least 3% on an end-to-end figure (``python -m bench.overrides``).
redis-py is pinned to its minor in pyproject.toml, and ``make test-redis-next`` runs
tests/integration/test_redis_*.py against the next one before the pin moves.

Private members of redis-py (8.2) this module touches, and behaviour it relies on:

- ``redis.asyncio.connection.AbstractConnection``: ``_writer`` (the asyncio StreamWriter),
  ``_reader`` (the StreamReader), ``_command_packer``, ``_pack_command_python``,
  ``_host_error()``, ``_force_disconnect()``; and, public but relied on in detail:
  ``read_response(disable_decoding, timeout, *, disconnect_on_error, push_request)`` taking
  ``timeout=math.inf`` as "no timer", ``send_packed_command(command, check_health)``,
  ``check_health()``, ``disconnect(nowait=True)``, ``is_connected``, ``socket_timeout``,
  ``health_check_interval``, ``encoder``, ``pack_command``.
- ``redis.connection.HiredisRespSerializer`` (not exported): its constructor
  ``(pack_command_python, encode)`` and ``pack``.
- ``redis.asyncio.connection.ConnectionPool``: ``_lock``, ``_in_use_connections``,
  ``_available_connections``; ``get_available_connection()``, ``ensure_connection()`` and a
  connection's ``should_reconnect()``.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import math
import weakref
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import logs
from shared.config import RedisOverrides

log = logs.get("sluice.redis")


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
def connection_class(base: type[Connection], on: frozenset[str]) -> type[Connection]:
    """``base`` with the connection overrides switched on in ``on``."""
    mixins = tuple(mixin for name, mixin in _MIXINS if name in on)
    if not mixins:
        return base
    return type(f"Quick{base.__name__}", (*mixins, base), {})


QuickConnection = connection_class(Connection, RedisOverrides().on)  # every one on


class QuickPool(ConnectionPool):
    """redis-py's pool, taking and giving back a connection without its lock and records.

    redis-py's own get_connection and release take its lock and await four observability
    records (no-ops unless its OpenTelemetry export is on: it is not) and an event dispatch
    (for credential providers: none here) per command, 8 of a GET's 33 us of client CPU. On
    one event loop nothing awaits between taking a connection and marking it in use, so the
    lock is only waited for while someone holds it (the pool's disconnect, across awaits).
    ``shared.redis_conn.WaitingPool`` puts its turns before it."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection = await self._take()
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self._give_back(connection)
            raise
        return connection

    async def release(self, connection: Any) -> None:
        await self._give_back(connection)

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

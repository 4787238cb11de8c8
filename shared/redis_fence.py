"""Where Sluice overrides redis-py's internals for speed: fenced here, each behind its switch.

Each override has a switch in ``REDIS_OVERRIDES`` (:class:`shared.config.RedisOverrides`,
described in ``shared/redis_conn.py``); switched off, redis-py's own path is used. Each stays
only while it is worth at least 3% on an end-to-end figure (``python -m bench.overrides``).
redis-py is pinned to its minor in pyproject.toml, and ``make test-redis-next`` runs
tests/integration/test_redis_*.py against the next one before the pin moves.

Private members of redis-py (8.2) this module touches, and behaviour it relies on:

- ``redis.asyncio.connection.AbstractConnection``: ``_writer`` (the asyncio StreamWriter the
  lane writes on and whose transport it checks), ``_reader`` (the StreamReader, checked for
  EOF), ``_command_packer`` and ``_pack_command_python`` (the packer swapped),
  ``_force_disconnect()``; and, public but relied on in detail: ``read_response()`` (the
  lane's replies, in order, an error reply raised as ``ResponseError``), ``is_connected``,
  ``health_check_interval``, ``encoder`` (``encoding``, ``encoding_errors``, ``encode``),
  ``pack_command``.
- ``redis.connection.HiredisRespSerializer`` (not exported): its constructor
  ``(pack_command_python, encode)`` and ``pack``.
- ``redis.asyncio.connection.ConnectionPool``: ``_lock``, ``_in_use_connections``,
  ``_available_connections``; ``get_available_connection()``, ``ensure_connection()`` and a
  connection's ``should_reconnect()`` and ``disconnect()``.

What stays, measured on vs off (``python -m bench.overrides``, runs alternating on and off,
on a shared and busy 2-core machine; medians of CPU ms per e2e task and of submits/s):
``pool`` (11 pairs: CPU per task -4%, submits/s +24%), ``pack`` (3 pairs: CPU per task -12%,
submits/s +28%), ``lane`` (6 pairs: CPU per task -6%, submits/s +30%). Measured and removed,
no gain of 3% on either figure: replies awaited under one timer per loop instead of one each
(``watch``, 9 pairs: CPU per task -2.6%, submits/s -4.9%), a write without
``asyncio.wait_for`` (``write``, 9 pairs: +1.1%, -5.0%) and ``evalsha_all`` (a coalescer's
calls sent without redis-py's pipeline, 9 pairs: -2.1%, -17%).
"""

from __future__ import annotations

import asyncio
import codecs
import functools
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError

from shared import logs

log = logs.get("sluice.redis")


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


@functools.cache
def connection_class(base: type[Connection], on: frozenset[str]) -> type[Connection]:
    """``base``, with :class:`_QuickPacker` when ``pack`` is in ``on``."""
    if "pack" not in on:
        return base
    return type(f"Quick{base.__name__}", (_QuickPack, base), {})


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

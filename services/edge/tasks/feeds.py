"""Live reads of task event streams, shared by every client of one edge process.

Why a fan-out: a blocking XREAD holds its Redis connection for as long as it blocks. One XREAD
per watching client would take one connection per client, and the edge's main pool would
run dry under many watchers, starving submits and reads. So each edge process keeps one
*feed* per watched task, however many local clients watch it; what is read of the task's
stream is appended to the feed, an in-memory list that every client walks at its own pace. A
slow client only slows itself, and the processor, which only XADDs, is never slowed by anyone.

Why multiplexed: one blocking XREAD per watched task cost a Redis connection per task, in the
edge and in redis-server (their buffers were most of the memory of a watched stream). Instead
a :class:`_Reader` reads up to ``STREAMS_PER_READER`` feeds' streams with one
``XREAD BLOCK .. STREAMS k1 .. kn id1 .. idn``: every key of a deployment shares one hash tag,
so this is single-slot on a Redis Cluster too. A feed starts with a read of its own that does
not block (catch-up, through the main pool), then joins a reader; a reader blocked on the
streams it had must not keep the new one waiting, so joining XADDs to the reader's wake stream,
which every one of its reads includes.

Readers borrow connections from a pool of their own (``EDGE_STREAM_READERS``, a blocking
pool): with more readers than it holds, a read waits for a connection rather than failing, and
every blocking read lasts at most ``READ_BLOCK_MS``, so connections turn over.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from services.edge.context import EDGE, SETTINGS
from shared import logs
from shared.keys import Keys
from shared.redis_conn import UNAVAILABLE, RedisClient, connect_blocking

log = logs.get("sluice.edge")

TERMINAL_EVENTS = frozenset({"done", "error", "cancelled"})
READ_BLOCK_MS = 2000
READ_COUNT = 1000  # entries per stream and read
STREAMS_PER_READER = 100  # more per read: fewer connections, but each read costs more
WAKE_TTL_MS = 60_000  # a wake stream left by an edge that died goes away by itself
# Idle streams look at their client this often (a tick of the hub wakes every watcher), so a
# vanished one is let go within a second; SSE_KEEPALIVE_S when shorter.
POLL_S = 1.0
QUIET_SCAN_S = 0.25  # how often a busy reader looks for feeds quiet for a whole block
TRIM_EVERY = 64  # a feed with several watchers drops what all took once one is this far on

# Why a feed stopped reading.
TERMINAL, GONE, FAILED, CLOSED = "terminal", "gone", "failed", "closed"

Entry = tuple[str, dict[str, str]]


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a task's events stream: its stream id, type (``e``) and JSON data (``d``)."""

    id: str
    type: str
    data: str


def parse_id(entry_id: str) -> tuple[int, int]:
    """A stream id (``ms-seq``, or ``ms`` alone as Redis accepts it) as a sortable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _event_order(event: Event) -> tuple[int, int]:
    return parse_id(event.id)


class Cursor:
    """One watcher's place in a feed: the absolute index of the next event it takes."""

    __slots__ = ("pos",)

    def __init__(self, pos: int) -> None:
        self.pos = pos


class Feed:
    """What has been read of one task's events and not yet taken by all its watchers.

    Events every watcher has taken are dropped (a long answer is thousands of events; a feed
    that kept them all held most of the memory of a watched stream). A watcher that joins
    after some were dropped reads those from Redis (``Feeds.history``) up to ``trimmed``."""

    __slots__ = ("_waiters", "base", "cursors", "ended", "events", "key", "last",
                 "quiet_since", "reader", "starter", "stopping", "trimmed", "watchers")

    def __init__(self, key: str) -> None:
        self.key = key
        self.events: list[Event] = []
        self.base = 0  # absolute index of events[0]
        self.trimmed: str | None = None  # id of the last event dropped
        self.cursors: list[Cursor] = []
        self.ended: str | None = None
        self.watchers = 0
        self.last = "0-0"  # id of the last entry read
        self.quiet_since = 0.0  # loop time of the last entry read (or of joining a reader)
        self.starter: asyncio.Task[None] | None = None  # the catch-up read, then joining
        self.reader: _Reader | None = None
        self.stopping = False
        # One future per watcher waiting, not an asyncio.Event (whose deque alone is ~600 B):
        # a feed lives as long as its stream is watched.
        self._waiters: list[asyncio.Future[None]] = []

    async def wait(self) -> None:
        """Until the next append, end or tick of the hub (every ``Feeds.tick`` seconds). The
        waiter is registered before the first suspension: what a watcher looked at just before
        calling this cannot change unseen."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:  # cancelled: leave no stale waiter behind
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            raise

    def wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def position_after(self, entry_id: str | None) -> int:
        """Absolute index of the first held event after ``entry_id`` (the first held when
        None)."""
        if entry_id is None:
            return self.base
        return self.base + bisect.bisect_right(self.events, parse_id(entry_id),
                                               key=_event_order)

    def join(self, after: str | None) -> tuple[Cursor, str | None]:
        """A cursor for a new watcher that has seen up to ``after`` (nothing when None), and
        the id up to which it must first read from Redis: what was dropped and it has not seen
        (None when nothing)."""
        cursor = Cursor(self.position_after(after))
        self.cursors.append(cursor)
        dropped = self.trimmed
        if dropped is not None and (after is None or parse_id(after) < parse_id(dropped)):
            return cursor, dropped
        return cursor, None

    def take(self, cursor: Cursor, after: str | None = None) -> list[Event]:
        """The held events ``cursor`` has not taken (only those after ``after`` when given: a
        feed may be younger than its watcher and not yet hold its Last-Event-ID)."""
        if after is not None:
            cursor.pos = max(cursor.pos, self.position_after(after))
        start = cursor.pos - self.base
        if start >= len(self.events):
            return []
        taken = self.events[start:]
        cursor.pos = self.base + len(self.events)
        # A lone watcher drops at once; many look for their slowest now and then.
        if len(self.cursors) == 1 or start >= TRIM_EVERY:
            self._trim()
        return taken

    def leave(self, cursor: Cursor) -> None:
        self.cursors.remove(cursor)

    def _trim(self) -> None:
        if len(self.cursors) < self.watchers:
            return  # a watcher of watch() alone walks ``events`` itself: keep them all
        done = min(c.pos for c in self.cursors) - self.base
        if done > 0:
            self.trimmed = self.events[done - 1].id
            del self.events[:done]
            self.base += done

    def started(self, task: asyncio.Task[None]) -> None:
        """The catch-up is over: let its task go (the feed lives as long as its watchers)."""
        if self.starter is task:
            self.starter = None

    def append(self, events: list[Event]) -> None:
        self.events.extend(events)
        self.wake()

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            self.wake()

    def deliver(self, entries: list[Entry]) -> bool:
        """Append what was read; True when it held the terminal event (the feed is ended)."""
        events = to_events(entries)
        self.last = events[-1].id
        terminal = next((n for n, e in enumerate(events) if e.type in TERMINAL_EVENTS), None)
        if terminal is None:
            self.append(events)
            return False
        self.append(events[:terminal + 1])  # one terminal event ends a stream
        self.end(TERMINAL)
        return True


def to_events(entries: list[Entry]) -> list[Event]:
    # Interned: every event of a stream has one of a handful of types, kept once.
    return [Event(i, sys.intern(f.get("e", "")), f.get("d", "{}")) for i, f in entries]


class _Reader:
    """One blocking XREAD at a time over the streams of up to ``STREAMS_PER_READER`` feeds.

    Its loop runs while it has feeds; a feed leaves when it ends (terminal event, stream gone)
    or its last watcher leaves. A Redis error ends every feed it reads (FAILED): they shared
    the read that failed."""

    def __init__(self, hub: Feeds, wake_key: str) -> None:
        self.hub, self.wake_key = hub, wake_key
        self.feeds: dict[str, Feed] = {}
        self.task: asyncio.Task[None] | None = None
        self.wake_last = "0-0"
        self.blocked = False  # an XREAD BLOCK is out without this one's newest feeds
        self.woken = False  # ... and a wake was sent to it
        self.stopping = False
        self.next_scan = 0.0

    def add(self, feed: Feed) -> bool:
        """Take ``feed`` (caught up); True when the caller must wake the read under way."""
        feed.reader, feed.quiet_since = self, asyncio.get_running_loop().time()
        self.feeds[feed.key] = feed
        if self.task is None or self.task.done():
            # Owned, not fire-and-forget: the loop handles its own errors (they end its feeds,
            # which their watchers see), and close() cancels and awaits it.
            self.stopping = False
            self.task = asyncio.create_task(self._run(), name=f"feeds {self.wake_key}")
            return False
        if self.blocked and not self.woken:
            self.woken = True
            return True
        return False

    def remove(self, feed: Feed) -> None:
        if self.feeds.get(feed.key) is feed:
            del self.feeds[feed.key]

    async def _run(self) -> None:
        hub = self.hub
        try:
            while self.feeds and not self.stopping:
                streams: dict[Any, Any] = {key: f.last for key, f in self.feeds.items()}
                streams[self.wake_key] = self.wake_last
                self.blocked, self.woken = True, False
                try:
                    reply = await hub.blocking.xread(streams, count=READ_COUNT,
                                                     block=READ_BLOCK_MS)
                finally:
                    self.blocked = False
                now = asyncio.get_running_loop().time()
                for key, entries in _streams(reply):
                    if key == self.wake_key:
                        self.wake_last = entries[-1][0]
                        continue
                    feed = self.feeds.get(key)
                    if feed is None or feed.last != streams[key]:
                        continue  # left (or replaced) while we read
                    feed.quiet_since = now
                    if feed.deliver(entries):
                        del self.feeds[key]
                if now >= self.next_scan:
                    self.next_scan = now + QUIET_SCAN_S
                    await self._drop_gone(now)
        except (*UNAVAILABLE, RedisError) as exc:
            log.warning("event_feed_failed", streams=len(self.feeds), error=type(exc).__name__)
            self._fail_all()
        except Exception:
            # A bug, or a reply we cannot read (bytes that are not UTF-8): this task is the
            # only one that would ever end these feeds, so end them before dying, or their
            # watchers wait for ever. Their clients reconnect and read from a new reader.
            log.exception("event_feed_crashed", streams=len(self.feeds))
            self._fail_all()

    def _fail_all(self) -> None:
        feeds, self.feeds = list(self.feeds.values()), {}
        for feed in feeds:
            feed.end(FAILED)

    async def _drop_gone(self, now: float) -> None:
        """End the feeds whose stream is gone (expired by retention, or never existed): of
        those that read nothing for a whole block, with one pipelined EXISTS."""
        quiet = [f for f in self.feeds.values() if now - f.quiet_since >= READ_BLOCK_MS / 1000]
        if not quiet:
            return
        async with self.hub.redis.pipeline(transaction=False) as pipe:
            for feed in quiet:
                pipe.exists(feed.key)
            found = await pipe.execute()
        for feed, exists in zip(quiet, found, strict=True):
            feed.quiet_since = now
            if not exists and self.feeds.get(feed.key) is feed:
                del self.feeds[feed.key]
                feed.end(GONE)


class Feeds:
    """The per-process hub: at most one feed per watched task, read by a few readers."""

    def __init__(self, redis: RedisClient, blocking: RedisClient, keys: Keys,
                 tick: float = POLL_S) -> None:
        self.redis, self.blocking, self._keys = redis, blocking, keys
        self.tick = tick
        self._feeds: dict[str, Feed] = {}
        self._readers: list[_Reader] = []
        self._closed = False
        # One timer for every watcher of the process, not one per watcher and wait: owned,
        # started by the first watch, cancelled and awaited by close().
        self._ticker: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        """The edge is shutting down: long streams end, their clients reconnect elsewhere."""
        return self._closed

    @contextlib.asynccontextmanager
    async def watch(self, key: str, exists: bool = False) -> AsyncIterator[Feed]:
        """The feed of ``key`` while the block runs. ``exists``: the caller knows the stream
        is there (its task was just submitted, or is not finished), so a new feed need not
        catch up on its own: it joins a reader at once, whose next read starts the stream
        from its first entry (one round trip less per watched task; a stream that turns out
        gone is found by the reader's quiet scan instead of at once)."""
        feed = self._feeds.get(key)
        if feed is None or feed.ended not in (None, TERMINAL):
            # A feed that failed or found the stream gone is not reused: read afresh.
            feed = Feed(key)
            if self._closed:
                feed.end(CLOSED)
            else:
                self._feeds[key] = feed
                # Owned: it handles its own errors and is cancelled and awaited by the last
                # watcher to leave or by close().
                feed.starter = asyncio.create_task(self._start(feed, exists),
                                                   name=f"feed {key}")
                feed.starter.add_done_callback(feed.started)
                if self._ticker is None:
                    self._ticker = asyncio.create_task(self._tick(), name="feeds tick")
        feed.watchers += 1
        try:
            yield feed
        finally:
            feed.watchers -= 1
            if feed.watchers == 0:
                if self._feeds.get(key) is feed:
                    del self._feeds[key]
                await _stop(feed)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            for feed in list(self._feeds.values()):
                feed.wake()

    async def history(self, key: str, after: str | None, upto: str) -> list[Event] | None:
        """The events of ``key`` after ``after`` (from the first when None) up to and
        including ``upto``, from Redis; None when the stream no longer holds ``upto`` (gone).
        Raises what Redis raises."""
        entries: list[Entry] = await self.redis.xrange(  # type: ignore[assignment]
            key, min="-" if after is None else "(" + after, max=upto)
        if not entries or entries[-1][0] != upto:
            return None
        return to_events(entries)

    async def _start(self, feed: Feed, exists: bool = False) -> None:
        """Catch up without blocking (or see the stream gone), then join a reader; join at
        once when the stream is known to exist (``watch``)."""
        try:
            if not exists:
                reply = await self.redis.xread({feed.key: "0-0"}, count=READ_COUNT)
                entries = [e for _key, got in _streams(reply) for e in got]
                if not entries:
                    if not await self.redis.exists(feed.key):
                        feed.end(GONE)  # expired (retention) or never existed
                        return
                elif feed.deliver(entries):
                    return
            if feed.stopping:
                return
            reader = self._reader()
            if reader.add(feed):
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.xadd(reader.wake_key, {"w": ""}, maxlen=1, approximate=False)
                    pipe.pexpire(reader.wake_key, WAKE_TTL_MS)
                    await pipe.execute()
        except (*UNAVAILABLE, RedisError) as exc:
            log.warning("event_feed_failed", stream=feed.key, error=type(exc).__name__)
            if feed.reader is not None:
                feed.reader.remove(feed)
            feed.end(FAILED)

    def _reader(self) -> _Reader:
        for reader in self._readers:
            if len(reader.feeds) < STREAMS_PER_READER:
                return reader
        reader = _Reader(self, self._keys.edge_wake(uuid.uuid4().hex[:12]))
        self._readers.append(reader)
        return reader

    async def close(self) -> None:
        """End every feed: watchers finish their streams, clients reconnect elsewhere."""
        self._closed = True
        feeds = list(self._feeds.values())
        self._feeds.clear()
        for feed in feeds:
            feed.end(CLOSED)
        await asyncio.gather(*(_stop(f) for f in feeds))
        readers, self._readers = self._readers, []
        for reader in readers:
            reader.stopping = True
        await asyncio.gather(_cancel(self._ticker), *(_cancel(r.task) for r in readers))
        if readers:
            with contextlib.suppress(*UNAVAILABLE, RedisError):  # else their TTL removes them
                await self.redis.delete(*(r.wake_key for r in readers))


async def _stop(feed: Feed) -> None:
    """Stop the feed's catch-up (``stopping`` keeps it from joining a reader after a cancel
    that did not take) and take it off its reader, which then stops reading its stream."""
    feed.stopping = True
    await _cancel(feed.starter)
    if feed.reader is not None:
        feed.reader.remove(feed)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait for it. Cancelling it once is not enough on Python 3.11: a
    cancel that lands while redis-py sends a command inside ``asyncio.wait_for`` is swallowed
    when the send has just completed (fixed in 3.12), and the read carries on. So cancel until
    it takes; the loops' ``stopping`` flags are the backstop that ends them after that read."""
    while task is not None and not task.done():
        task.cancel()  # redis-py drops the connection of an interrupted read: no stale reply
        await asyncio.wait([task], timeout=0.05)


def _streams(reply: Any) -> Iterator[tuple[str, list[Entry]]]:
    """XREAD's reply as (stream, entries) pairs, whether the connection speaks RESP2 or RESP3."""
    if not reply:
        return
    if isinstance(reply, dict):  # RESP3: {key: [entries]}
        for key, wrapped in reply.items():
            yield key, wrapped[0]
        return
    for key, entries in reply:
        yield key, entries


FEEDS = web.AppKey("feeds", Feeds)


async def feeds_ctx(app: web.Application) -> AsyncIterator[None]:
    """The hub and its own connection pool for blocking reads; no I/O until a client watches."""
    settings, edge = app[SETTINGS], app[EDGE]
    blocking = connect_blocking(settings.common.redis_url,
                                max_connections=settings.stream_readers,
                                socket_timeout=READ_BLOCK_MS / 1000 + 5,
                                overrides=settings.common.redis_overrides)
    feeds = Feeds(edge.redis, blocking, edge.keys, tick=min(settings.keepalive_s, POLL_S))
    app[FEEDS] = feeds
    try:
        yield
    finally:
        await feeds.close()
        await blocking.aclose()


async def close_feeds(app: web.Application) -> None:
    """on_shutdown: before aiohttp waits for handlers, so live streams end at once."""
    await app[FEEDS].close()

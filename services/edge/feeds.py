"""Live reads of task event streams, shared by every client of one edge process.

Why a fan-out: a blocking XREAD holds its Redis connection for as long as it blocks. One XREAD
per watching client would take one connection per client, and the edge's main pool would
run dry under many watchers, starving submits and reads. So each edge
process runs one reader per *watched task*, however many local clients watch it; the reader
appends what it reads to an in-memory list that every client walks at its own pace. A slow
client only slows itself, and the processor, which only XADDs, is never slowed by anyone.

The readers borrow connections from a pool of their own (``EDGE_STREAM_READERS``, a blocking
pool): with more tasks watched at once than it holds, a new reader waits for a connection rather
than failing, and every blocking read lasts at most ``READ_BLOCK_MS``, so connections turn over.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from services.edge.context import EDGE, SETTINGS
from shared import logs
from shared.redis_conn import UNAVAILABLE, RedisClient, connect_blocking

log = logs.get("sluice.edge")

TERMINAL_EVENTS = frozenset({"done", "error", "cancelled"})
READ_BLOCK_MS = 2000
READ_COUNT = 1000

# Why a feed stopped reading.
TERMINAL, GONE, FAILED, CLOSED = "terminal", "gone", "failed", "closed"


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


class Feed:
    """What one reader has read of one task's events, from the first entry on."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.events: list[Event] = []
        self._order: list[tuple[int, int]] = []
        self.ended: str | None = None
        self.watchers = 0
        self.reader: asyncio.Task[None] | None = None
        self.stopping = False
        self._changed = asyncio.Event()

    @property
    def changed(self) -> asyncio.Event:
        """Set at the next append or end. Take it *before* looking at ``events``/``ended``, so
        nothing that happens between the look and the wait can be missed."""
        return self._changed

    def position_after(self, entry_id: str | None) -> int:
        """Index of the first event after ``entry_id`` (all of them when it is None)."""
        return 0 if entry_id is None else bisect.bisect_right(self._order, parse_id(entry_id))

    def append(self, events: list[Event]) -> None:
        self.events.extend(events)
        self._order.extend(parse_id(e.id) for e in events)
        self._wake()

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class Feeds:
    """The per-process hub: at most one feed (and one reader) per watched task."""

    def __init__(self, redis: RedisClient, blocking: RedisClient) -> None:
        self._redis, self._blocking = redis, blocking
        self._feeds: dict[str, Feed] = {}
        self._closed = False

    @contextlib.asynccontextmanager
    async def watch(self, key: str) -> AsyncIterator[Feed]:
        feed = self._feeds.get(key)
        if feed is None or feed.ended not in (None, TERMINAL):
            # A feed that failed or found the stream gone is not reused: read afresh.
            feed = Feed(key)
            if self._closed:
                feed.end(CLOSED)
            else:
                self._feeds[key] = feed
                # Owned, not fire-and-forget: the reader handles its own errors (they end the
                # feed, which its watchers see), and it is cancelled and awaited by the last
                # watcher to leave or by close().
                feed.reader = asyncio.create_task(self._read(feed), name=f"feed {key}")
        feed.watchers += 1
        try:
            yield feed
        finally:
            feed.watchers -= 1
            if feed.watchers == 0:
                if self._feeds.get(key) is feed:
                    del self._feeds[key]
                await _stop(feed)

    async def _read(self, feed: Feed) -> None:
        last, block = "0-0", None  # the first read does not block: catch up, or see it gone
        try:
            while not feed.stopping:
                reply: Any = await self._blocking.xread({feed.key: last}, count=READ_COUNT,
                                                        block=block)
                block = READ_BLOCK_MS
                entries = _entries(reply)
                if not entries:
                    if not await self._redis.exists(feed.key):
                        feed.end(GONE)  # expired (retention) or never existed
                        return
                    continue
                events = [Event(i, f.get("e", ""), f.get("d", "{}")) for i, f in entries]
                last = events[-1].id
                terminal = next((n for n, e in enumerate(events)
                                 if e.type in TERMINAL_EVENTS), None)
                if terminal is not None:
                    feed.append(events[:terminal + 1])  # one terminal event ends a stream
                    feed.end(TERMINAL)
                    return
                feed.append(events)
        except (*UNAVAILABLE, RedisError) as exc:
            log.warning("event_feed_failed", stream=feed.key, error=type(exc).__name__)
            feed.end(FAILED)

    async def close(self) -> None:
        """End every feed: watchers finish their streams, clients reconnect elsewhere."""
        self._closed = True
        feeds = list(self._feeds.values())
        self._feeds.clear()
        for feed in feeds:
            feed.end(CLOSED)
        await asyncio.gather(*(_stop(f) for f in feeds))


async def _stop(feed: Feed) -> None:
    """Stop the reader and wait for it. Cancelling it once is not enough on Python 3.11: a
    cancel that lands while redis-py sends a command inside ``asyncio.wait_for`` is swallowed
    when the send has just completed (fixed in 3.12), and the read carries on. So cancel until
    it takes, with ``stopping`` as a backstop that ends the loop after its current read."""
    reader = feed.reader
    feed.stopping = True
    while reader is not None and not reader.done():
        reader.cancel()  # redis-py drops the connection of an interrupted read: no stale reply
        await asyncio.wait([reader], timeout=0.05)


def _entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """XREAD's reply for our one stream, whether the connection speaks RESP2 or RESP3."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3: {key: [entries]}
        return [e for wrapped in reply.values() for e in wrapped[0]]
    return [e for _key, entries in reply for e in entries]


FEEDS = web.AppKey("feeds", Feeds)


async def feeds_ctx(app: web.Application) -> AsyncIterator[None]:
    """The hub and its own connection pool for blocking reads; no I/O until a client watches."""
    settings = app[SETTINGS]
    blocking = connect_blocking(settings.common.redis_url,
                                max_connections=settings.stream_readers,
                                socket_timeout=READ_BLOCK_MS / 1000 + 5)
    feeds = Feeds(app[EDGE].redis, blocking)
    app[FEEDS] = feeds
    try:
        yield
    finally:
        await feeds.close()
        await blocking.aclose()


async def close_feeds(app: web.Application) -> None:
    """on_shutdown: before aiohttp waits for handlers, so live streams end at once."""
    await app[FEEDS].close()

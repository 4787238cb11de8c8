"""The edge's multiplexed event reader (services/edge/tasks/feeds.py) against a real Redis: many
watched streams on one blocking read, each feed exactly its own events in order; a stream added
while the read blocks flows at once; a gone stream, a Redis error and close() each end feeds
the way their watchers expect."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from harness.processes import RedisServer
from harness.waiting import until
from services.edge.tasks.events import follow, follow_batches
from services.edge.tasks.feeds import (
    CLOSED,
    FAILED,
    GONE,
    READ_BLOCK_MS,
    TERMINAL,
    Event,
    Feed,
    Feeds,
)
from shared.keys import Keys
from shared.redis_conn import RedisClient, connect, connect_blocking

BLOCK_S = READ_BLOCK_MS / 1000


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this module's own: the tests count its blocked clients, which on the
    session's server also counts other tests' blocking reads (a processor's, an edge's closing)
    as they come and go (a flake under load)."""
    server = RedisServer(tmp_path_factory.mktemp("feeds-redis"), appendonly=False).start()
    yield server.url
    server.stop()


@pytest.fixture
async def hub(redis: RedisClient, redis_url: str, keys: Keys) -> AsyncIterator[Feeds]:
    blocking = connect_blocking(redis_url, max_connections=8, socket_timeout=BLOCK_S + 5)
    feeds = Feeds(redis, blocking, keys)
    yield feeds
    await feeds.close()
    await blocking.aclose()


async def blocked(redis: RedisClient) -> int:
    return int((await redis.info("clients"))["blocked_clients"])


async def to_the_end(feeds: Feeds, key: str, within_s: float = 8.0) -> Feed:
    """Watch ``key`` until its feed ends; the feed, with what it read."""
    async with feeds.watch(key) as feed, asyncio.timeout(within_s):
        while True:
            if feed.ended is not None:
                return feed
            await feed.wait()


@contextlib.asynccontextmanager
async def watching(feeds: Feeds, key: str) -> AsyncIterator[Feed]:
    """Watch ``key`` and yield its feed once it has caught up and joined a reader."""
    async with feeds.watch(key) as feed:
        async def joined() -> bool:
            return feed.reader is not None and key in feed.reader.feeds
        await until(joined, 10, f"the watch of {key} to join a reader")
        yield feed


async def add(redis: RedisClient, key: str, kind: str, data: str = "{}") -> str:
    return str(await redis.xadd(key, {"e": kind, "d": data}))


async def started(redis: RedisClient, keys: Keys, name: str, n: int) -> list[str]:
    """``n`` task event streams, each with its first status event."""
    streams = [keys.events(f"{name}-{i}") for i in range(n)]
    for key in streams:
        await add(redis, key, "status")
    return streams


async def until_a_read_blocks(redis: RedisClient) -> None:
    async def read_blocks() -> bool:
        return await blocked(redis) > 0
    await until(read_blocks, 10, "a blocking read")


async def test_many_feeds_share_one_blocking_read_and_each_gets_its_own_events_in_order(
        redis: RedisClient, keys: Keys, hub: Feeds) -> None:
    streams = [keys.events(f"many-{n}") for n in range(40)]
    for key in streams:
        await add(redis, key, "status", '{"status":"queued"}')
    async def none_blocked() -> bool:  # the previous test's reads ended with its connections
        return await blocked(redis) == 0
    await until(none_blocked, 10, "no blocking read")
    readers = [asyncio.create_task(to_the_end(hub, key)) for key in streams]

    async def all_joined() -> int:
        feeds = [hub._feeds.get(k) for k in streams]
        return all(f is not None and f.reader is not None for f in feeds) and \
            await blocked(redis)
    # Blocked reads seen: one once every feed joined, then at most one at any time (a sample
    # taken while the reader reads sees none; only more than one would be wrong).
    seen = [int(await until(all_joined, 10, "every feed to join the one blocking read"))]
    for i in range(15):
        for key in streams:
            await add(redis, key, "content", f'{{"delta":"{key}/{i}"}}')
        seen.append(await blocked(redis))
    for key in streams:
        await add(redis, key, "done")
    ended = await asyncio.gather(*readers)
    assert max(seen) == 1, seen  # one blocking read (one connection) for all 40 streams
    for key, feed in zip(streams, ended, strict=True):
        assert feed.ended == TERMINAL
        assert [e.type for e in feed.events] == ["status"] + ["content"] * 15 + ["done"]
        assert [e.data for e in feed.events[1:-1]] == [
            f'{{"delta":"{key}/{i}"}}' for i in range(15)]


async def test_a_stream_added_while_the_read_blocks_flows_without_waiting_out_the_block(
        redis: RedisClient, keys: Keys, hub: Feeds) -> None:
    first, second = keys.events("first"), keys.events("second")
    await add(redis, first, "status")
    await add(redis, second, "status")
    async with watching(hub, first) as feed:
        reader = feed.reader
        assert reader is not None

        async def read_blocks() -> bool:
            return reader.blocked and await blocked(redis) > 0
        await until(read_blocks, 10, "the reader to block")
        async with watching(hub, second) as late:
            assert late.reader is reader  # joined the same read
            loop = asyncio.get_running_loop()
            start = loop.time()
            await add(redis, second, "content", '{"delta":"now"}')

            async def arrived() -> bool:
                return len(late.events) == 2
            await until(arrived, BLOCK_S + 3, "the late stream's event")
            assert loop.time() - start < BLOCK_S / 4
            assert late.events[-1].data == '{"delta":"now"}'


async def test_a_gone_stream_ends_its_feed_gone_and_its_neighbours_read_on(
        redis: RedisClient, keys: Keys, hub: Feeds) -> None:
    assert (await to_the_end(hub, keys.events("never"))).ended == GONE  # at once: no block
    stays, goes = keys.events("stays"), keys.events("goes")
    await add(redis, stays, "status")
    await add(redis, goes, "status")
    async with watching(hub, stays) as neighbour:
        gone = asyncio.create_task(to_the_end(hub, goes))

        async def joined() -> bool:
            feed = hub._feeds.get(goes)
            return feed is not None and feed.reader is not None
        await until(joined, 10, "the feed of the stream that goes to join a reader")
        await redis.delete(goes)  # as retention expires it
        assert (await gone).ended == GONE
        await add(redis, stays, "done")

        async def finished() -> bool:
            return neighbour.ended == TERMINAL
        await until(finished, 10, "the neighbour's feed to end")
        assert [e.type for e in neighbour.events] == ["status", "done"]


async def test_a_redis_error_ends_the_feeds_of_the_read_failed_and_a_new_watch_reads_again(
        redis: RedisClient, keys: Keys, hub: Feeds) -> None:
    streams = await started(redis, keys, "err", 3)
    async with contextlib.AsyncExitStack() as stack:
        feeds = [await stack.enter_async_context(watching(hub, key)) for key in streams]
        await until_a_read_blocks(redis)
        clients = await redis.client_list()
        [reading] = [c for c in clients if c["cmd"] == "xread" and "b" in c["flags"]]
        await redis.client_kill_filter(_id=reading["id"])

        async def all_failed() -> bool:
            return all(f.ended == FAILED for f in feeds)
        await until(all_failed, 10, "every feed of the failed read to end FAILED")
    await add(redis, streams[0], "done")
    again = await to_the_end(hub, streams[0])
    assert again.ended == TERMINAL
    assert [e.type for e in again.events] == ["status", "done"]


async def test_close_ends_every_feed_and_removes_the_wake_streams(
        redis: RedisClient, keys: Keys, hub: Feeds) -> None:
    streams = await started(redis, keys, "close", 3)
    async with watching(hub, streams[0]) as feed, contextlib.AsyncExitStack() as stack:
        reader = feed.reader
        assert reader is not None

        async def read_blocks() -> bool:
            return reader.blocked and await blocked(redis) > 0
        await until(read_blocks, 10, "the reader to block")
        rest = [await stack.enter_async_context(watching(hub, key)) for key in streams[1:]]
        assert await redis.exists(reader.wake_key)  # a watch joined the blocked read
        await hub.close()
        assert [f.ended for f in [feed, *rest]] == [CLOSED] * 3
        assert not await redis.exists(reader.wake_key)
        assert (await to_the_end(hub, streams[0], within_s=0.5)).ended == CLOSED


async def test_on_a_redis_cluster_one_read_serves_many_streams_and_a_late_one_is_woken(
        redis_cluster_url: str) -> None:
    # Every key of a deployment shares one hash tag: a read over many streams is single-slot.
    cluster = connect(redis_cluster_url)
    blocking = connect_blocking(redis_cluster_url, max_connections=4, socket_timeout=BLOCK_S + 5)
    keys = Keys("c" + uuid.uuid4().hex[:10])
    hub = Feeds(cluster, blocking, keys)
    streams = [keys.events(f"c-{n}") for n in range(5)]
    try:
        for key in streams:
            await add(cluster, key, "status")
        async with watching(hub, streams[0]) as feed:
            reader = feed.reader
            assert reader is not None

            async def read_blocks() -> bool:
                return reader.blocked
            await until(read_blocks, 10, "the cluster reader to block")
            readers = [asyncio.create_task(to_the_end(hub, key)) for key in streams[1:]]

            async def all_joined() -> bool:
                return all(k in reader.feeds for k in streams[1:])
            await until(all_joined, 10, "the other streams to join the blocked read")
            for key in streams[1:]:
                await add(cluster, key, "content", '{"delta":"x"}')
                await add(cluster, key, "done")
            ended = await asyncio.wait_for(asyncio.gather(*readers), BLOCK_S / 2)
            assert [[e.type for e in f.events] for f in ended] == [
                ["status", "content", "done"]] * 4
    finally:
        await hub.close()
        await blocking.aclose()
        await cluster.delete(*streams)
        await cluster.aclose()


async def _no_view() -> None:
    return None


async def test_a_feed_keeps_only_what_a_watcher_has_not_taken_and_a_later_one_reads_the_rest(
        redis: RedisClient, keys: Keys, hub: Feeds) -> None:
    """A long answer's events are not all held in the edge's memory: what every watcher took is
    dropped, and a client that comes later still gets every event once, in order (the dropped
    ones read back from Redis), or from its Last-Event-ID on."""
    key = keys.events("trimmed")
    ids = [await add(redis, key, "status")]
    ids += [await add(redis, key, "content", f'{{"delta":"{i}"}}') for i in range(5)]
    first = follow(hub, key, None, _no_view)
    seen = [await anext(first) for _ in ids]
    assert [e.id for e in seen if e is not None] == ids
    feed = hub._feeds[key]
    assert feed.events == [] and feed.trimmed == ids[-1]
    late = follow(hub, key, None, _no_view)
    resumed = follow(hub, key, ids[2], _no_view)
    ids += [await add(redis, key, "content", '{"delta":"more"}'), await add(redis, key, "done")]

    async def rest(events: AsyncIterator[Event | None]) -> list[str]:
        return [e.id async for e in events if e is not None]
    got = await asyncio.gather(rest(first), rest(late), rest(resumed))
    assert got == [ids[6:], ids, ids[3:]]
    assert key not in hub._feeds  # the last watcher gone, the feed went with it


async def _trimmed(redis: RedisClient, hub: Feeds, key: str) -> AsyncIterator[Event | None]:
    """A watcher that has taken (so the feed dropped) the two events of ``key``."""
    await add(redis, key, "status")
    await add(redis, key, "content", '{"delta":"a"}')
    first = follow(hub, key, None, _no_view)
    assert [(await anext(first)) is not None for _ in range(2)] == [True, True]
    assert hub._feeds[key].events == []
    return first


async def test_a_late_watcher_whose_dropped_events_are_gone_from_redis_gets_the_stored_end(
        redis: RedisClient, keys: Keys, hub: Feeds) -> None:
    """What the feed dropped is read back from Redis; a stream Redis no longer holds ends the
    late client's stream with the stored terminal event, as an expired stream does."""
    key = keys.events("trimmed-gone")
    first = await _trimmed(redis, hub, key)
    await redis.delete(key)  # retention ran out between the two clients

    async def stored() -> dict[str, object]:
        return {"id": "t", "status": "succeeded", "result": {"content": "a"}}
    async with asyncio.timeout(BLOCK_S / 2):  # at once, not when the reader finds it gone
        late = [e async for e in follow(hub, key, None, stored)]
    assert [(e.id, e.type) for e in late if e is not None] == [("final", "done")]
    await first.aclose()


async def test_a_late_watcher_whose_read_back_fails_ends_without_a_terminal_event(
        redis: RedisClient, keys: Keys, hub: Feeds) -> None:
    """Redis failing on the read back ends the late client's stream early (it reconnects and
    resumes); the watcher already following carries on."""
    key = keys.events("trimmed-failed")
    first = await _trimmed(redis, hub, key)
    working, hub.redis = hub.redis, connect("redis://127.0.0.1:1")  # nothing listens there
    try:
        assert [e async for e in follow(hub, key, None, _no_view)] == []
    finally:
        await hub.redis.aclose()
        hub.redis = working
    done = await add(redis, key, "done")
    async with asyncio.timeout(5):
        assert [e.id async for e in first if e is not None] == [done]


async def test_an_idle_watcher_is_woken_by_the_hubs_tick_and_a_cancelled_one_leaves_nothing(
        redis: RedisClient, redis_url: str, keys: Keys) -> None:
    """One timer for the whole process: every tick of the hub wakes the idle watchers (the
    events endpoint then looks at its client and sends keep-alives), and a watcher cancelled
    mid-wait leaves no waiter on its feed."""
    blocking = connect_blocking(redis_url, max_connections=2, socket_timeout=BLOCK_S + 5)
    hub = Feeds(redis, blocking, keys, tick=0.05)
    try:
        key = keys.events("ticked")
        first = await add(redis, key, "status")
        events = follow(hub, key, None, _no_view)
        async with asyncio.timeout(5):
            assert (e := await anext(events)) is not None and e.id == first
            assert await anext(events) is None
            hub.tick = 60  # from the tick after the next on: nothing wakes the watcher by chance
            assert await anext(events) is None
        feed = hub._feeds[key]
        waiting = asyncio.create_task(anext(events))

        async def parked() -> bool:
            return len(feed._waiters) == 1
        await until(parked, 10, "the waiter to park on the feed")
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        assert feed._waiters == []
        assert key not in hub._feeds
    finally:
        await hub.close()
        await blocking.aclose()


async def test_an_entry_the_reader_cannot_decode_ends_its_feeds_and_a_new_watch_reads_again(
        redis: RedisClient, redis_url: str, keys: Keys, hub: Feeds) -> None:
    """Anything but a Redis error (here bytes that are not UTF-8, which no processor writes but
    a bug or an operator could) used to end the reader's task in silence: its feeds were left
    open and their watchers waited for ever."""
    streams = await started(redis, keys, "undecodable", 2)
    raw = Redis.from_url(redis_url)  # bytes in, bytes out: writes what ours never would
    try:
        async with contextlib.AsyncExitStack() as stack:
            feeds = [await stack.enter_async_context(watching(hub, key)) for key in streams]
            await until_a_read_blocks(redis)
            await raw.xadd(streams[0], {b"e": b"content", b"d": b"\xff\xfe"})

            async def all_failed() -> bool:
                return all(f.ended == FAILED for f in feeds)
            await until(all_failed, 10, "every feed of the read ended as failed")
    finally:
        await raw.aclose()
    await add(redis, streams[1], "done")
    again = await to_the_end(hub, streams[1])
    assert again.ended == TERMINAL


async def test_what_is_read_together_comes_as_one_batch_up_to_the_terminal_event(
        redis: RedisClient, keys: Keys, hub: Feeds) -> None:
    """A relay writes each batch with one write: the events one read brought come together,
    cut after the first terminal event (one terminal event ends a stream); what comes later
    comes as a later batch, nothing held back for it."""
    key = keys.events("batched")
    ids = [await add(redis, key, "status"), await add(redis, key, "content", '{"delta":"a"}')]
    batches = follow_batches(hub, key, None, _no_view)
    first = await anext(batches)
    assert first is not None and [e.id for e in first] == ids
    later = [await add(redis, key, "content", '{"delta":"b"}'), await add(redis, key, "done")]
    await add(redis, key, "status")  # after the terminal event: never relayed
    rest = [b async for b in batches if b is not None]
    assert [[e.id for e in b] for b in rest] in ([later], [later[:1], later[1:]])


async def test_a_stream_known_to_exist_is_read_by_the_reader_from_its_first_entry(
        redis: RedisClient, keys: Keys, hub: Feeds) -> None:
    """A just-submitted task's stream needs no catch-up read of its own: the feed joins a
    reader at once and gets every event from the first. Shown with the main client pointing
    where nothing listens: the catch-up would fail the feed; the reader reads alone."""
    key = keys.events("known")
    ids = [await add(redis, key, "status"), await add(redis, key, "content", '{"delta":"a"}')]
    working, hub.redis = hub.redis, connect("redis://127.0.0.1:1")  # nothing listens there
    try:
        batches = follow_batches(hub, key, None, _no_view, exists=True)
        first = await anext(batches)
        while first is None:  # a tick of the hub on a slow machine
            first = await anext(batches)
    finally:
        # The main client back before anything else: a reader looks at streams quiet for a
        # whole block through it (a stall of this process that long would fail the feed).
        await hub.redis.aclose()
        hub.redis = working
    ids.append(await add(redis, key, "done"))
    got = [e.id for b in [first] + [b async for b in batches] if b is not None for e in b]
    assert got == ids


@pytest.mark.parametrize("exists", [False, True])
async def test_a_terminal_event_read_while_the_watcher_writes_its_last_batch_still_reaches_it(
        redis: RedisClient, keys: Keys, hub: Feeds, exists: bool) -> None:
    """The reader may end a feed (its terminal event read) while its watcher is away writing
    the batch before to a slow client: the watcher, back, must still take that event, not
    take the feed's end for the stream's (which would end the client's stream without it)."""
    key = keys.events(f"ends-while-away-{exists}")
    ids = [await add(redis, key, "status")]
    batches = follow_batches(hub, key, None, _no_view, exists=exists)
    first = await anext(batches)
    while first is None:  # a tick of the hub on a slow machine
        first = await anext(batches)
    async with hub.watch(key) as feed:  # the same feed, seen from here
        ids.append(await add(redis, key, "done"))
        await until(lambda: feed.ended is not None, 5, "the reader reading the done event")
        rest = [b async for b in batches]
    got = [e.id for b in [first, *rest] if b is not None for e in b]
    assert got == ids

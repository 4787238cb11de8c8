"""``GET /api/tasks/{id}/events``: a task's status changes and deltas, live, as Server-Sent
Events straight from its Redis events stream.

Every event's ``id:`` is its stream entry id, so a client that reconnects with
``Last-Event-ID`` gets exactly what follows it. A late client gets everything from the start;
once Redis has forgotten the task (``EVENTS_RETENTION_S``), the stored result arrives as one
terminal event. A comment line every ``SSE_KEEPALIVE_S`` keeps idle connections open.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from services.edge.context import TASK_ID_KEY, Edge, edge_of
from services.edge.plumbing.auth import tenant_of
from services.edge.plumbing.errors import ApiError
from services.edge.tasks import service
from services.edge.tasks.feeds import FEEDS, GONE, TERMINAL_EVENTS, Event, Feeds
from shared import metrics, tasks
from shared.redis_conn import UNAVAILABLE

# The id of a terminal event rebuilt from the store: nothing can follow it.
FINAL_ID = "final"
KEEPALIVE = b": keepalive\n\n"
_STREAM_ID = re.compile(r"[0-9]{1,19}(-[0-9]{1,19})?")

ViewLoader = Callable[[], Awaitable[dict[str, Any] | None]]


def sse_response(headers: dict[str, str] | None = None) -> web.StreamResponse:
    resp = web.StreamResponse(headers=headers)
    resp.content_type = "text/event-stream"
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"  # tell nginx-like proxies not to buffer
    return resp


def encode(event: Event) -> bytes:
    data = "".join(f"data: {line}\n" for line in event.data.split("\n"))
    return f"id: {event.id}\nevent: {event.type}\n{data}\n".encode()


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def view_loader(edge: Edge, tenant: str, task_id: str) -> ViewLoader:
    async def load() -> dict[str, Any] | None:
        try:
            return await service.read(edge, tenant, task_id)
        except (ApiError, *UNAVAILABLE):
            return None  # the stream just ends; the client reconnects or reads the task
    return load


def terminal_from_view(view: dict[str, Any]) -> Event | None:
    """The one terminal event a client gets once Redis has forgotten the task."""
    kind = tasks.TERMINAL_EVENT.get(view.get("status") or "")
    return None if kind is None else Event(FINAL_ID, kind, orjson.dumps(view).decode())


async def follow_batches(feeds: Feeds, key: str, after: str | None,
                         final_view: ViewLoader, exists: bool = False
                         ) -> AsyncGenerator[list[Event] | None, None]:
    """The task's events after ``after`` (all when None), up to and including its terminal
    event, in the batches they were read in: a relay writes a batch with one write, where one
    write per event cost a syscall each (a short answer's status, delta and done events often
    arrive together). Nothing is held back to make a batch. ``None`` at each tick of the hub
    (``feeds.tick``) that brought none. Stops early, without a terminal event, when the edge
    shuts down or Redis fails: the client reconnects and resumes. ``exists``: the stream is
    known to be there (``Feeds.watch``)."""
    async with feeds.watch(key, exists) as feed:
        cursor, dropped = feed.join(after)
        try:
            history: list[Event] | None = []
            if dropped is not None:  # the feed let go of events this client has not seen
                try:
                    history = await feeds.history(key, after, dropped)
                except (*UNAVAILABLE, RedisError):
                    return
                after = dropped
            if history:
                upto = _upto_terminal(history)
                yield upto
                if upto[-1].type in TERMINAL_EVENTS:
                    return
            gone = history is None
            woken = False
            while not gone:
                # Whether it ended, looked at before taking: a reader that read the terminal
                # event while this watcher was away (writing the last batch to its client)
                # ended the feed too, and that event must be taken before the end is obeyed.
                ended = feed.ended
                events = feed.take(cursor, after)
                if events:
                    upto = _upto_terminal(events)
                    yield upto
                    if upto[-1].type in TERMINAL_EVENTS:
                        return
                if ended is not None:
                    gone = ended == GONE
                    break
                if woken and not events:
                    yield None  # a tick: nothing came
                await feed.wait()
                woken = True
        finally:
            feed.leave(cursor)
    if gone:
        view = await final_view()
        final = terminal_from_view(view) if view is not None else None
        if final is not None:
            yield [final]


def _upto_terminal(events: list[Event]) -> list[Event]:
    """``events`` up to and including the first terminal one: one terminal event ends a
    stream."""
    for n, event in enumerate(events):
        if event.type in TERMINAL_EVENTS:
            return events[:n + 1]
    return events


async def follow(feeds: Feeds, key: str, after: str | None,
                 final_view: ViewLoader) -> AsyncGenerator[Event | None, None]:
    """``follow_batches`` one event at a time, for readers that take events singly."""
    batches = follow_batches(feeds, key, after, final_view)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            if batch is None:
                yield None
                continue
            for event in batch:
                yield event


def last_event_id(request: web.Request) -> str | None:
    """``Last-Event-ID`` (or ``?last_event_id=`` for clients that cannot set headers)."""
    found = None
    for name, raw in (("Last-Event-ID", request.headers.get("Last-Event-ID")),
                      ("last_event_id", request.query.get("last_event_id"))):
        value = (raw or "").strip()
        if value and value != FINAL_ID and not _STREAM_ID.fullmatch(value):
            raise ApiError(422, "invalid_request", f"{name}: not an event id of this stream",
                           param=name)
        found = found or value or None
    return found


async def _caught_up(edge: Edge, key: str, after: str) -> bool:
    """True when the client already holds the last event of a finished task's stream."""
    if after == FINAL_ID:
        return True
    async with edge.redis.pipeline(transaction=False) as p:
        p.exists(key)
        p.xrange(key, min="(" + after, max="+", count=1)
        exists, following = await p.execute()
    return bool(exists) and not following


async def task_events(request: web.Request) -> web.StreamResponse:
    edge, tenant, task_id = edge_of(request), tenant_of(request), request.match_info["id"]
    # 404 for unknown ids and other tenants. Only its status is kept: the view is the task's
    # whole hash, not worth holding for the minutes a stream can last.
    ended = (await service.read(edge, tenant, task_id))["status"] in tasks.TERMINAL
    after = last_event_id(request)
    if after == FINAL_ID and not ended:
        after = None  # "final" came from an earlier run of a task since retried: start over
    request[TASK_ID_KEY] = task_id
    key = edge.keys.events(task_id)
    if after is not None and ended and await _caught_up(edge, key, after):
        # Nothing more will ever come; 204 is what stops an EventSource from reconnecting.
        return web.Response(status=204)
    resp = sse_response()
    await resp.prepare(request)
    keepalive = edge.settings.keepalive_s
    # A task not finished has its events stream (submit writes its first event).
    batches = follow_batches(request.app[FEEDS], key, after,
                             view_loader(edge, tenant, task_id), exists=not ended)
    async with contextlib.aclosing(batches), metrics.sse_client():
        last_write = time.monotonic()
        async for batch in batches:
            if batch is None:
                if client_gone(request):
                    break
                if time.monotonic() - last_write < keepalive:
                    continue
            try:
                await resp.write(KEEPALIVE if batch is None
                                 else b"".join(encode(event) for event in batch))
            except ConnectionResetError:
                break  # the client left: nothing to clean up but the feed, done by aclosing
            last_write = time.monotonic()
            if batch is not None:
                metrics.events_relayed.inc(len(batch))
    return resp

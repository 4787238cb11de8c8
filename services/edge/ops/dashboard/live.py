"""``GET /api/admin/live/events``: the dashboard's Live view as one Server-Sent Events stream.

Why one stream: the view used to open one streaming request per task in flight, queued ones
included. Past six, a browser's connections to one host were all taken by streams, so every
other request of the page (the overview, a tab's data) waited for ever: the page froze. Here
one connection carries the events of up to ``LIVE_CAP`` running tasks, each read through the
edge's feed hub (tasks/feeds.py: one Redis read per watched stream however many clients watch
it), so the page keeps five connections for everything else.

Why a stream rather than polling one endpoint: the tokens arrive as the provider sends them,
and a poll would read each task's whole stream from Redis again, per viewer and per poll.

What it sends:

* ``event: tasks``, every ``REFRESH_S``: the running tasks followed (``following``, oldest
  first), how many run in all that this key may see (``running``) and the cap;
* each followed task's own events (``status``, ``content``, ``reasoning``, ``reset``, ``done``,
  ``error``, ``cancelled``), as ``{"task": id, "data": <the event's data>}``;
(the ``tasks`` event, every second, keeps the connection alive too).

A task is followed until its terminal event; a newly running one takes a free place. The
stream ends when the client leaves, when the edge shuts down or when Redis fails (the page
opens it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from services.edge.context import Edge, edge_of
from services.edge.ops import dashboard
from services.edge.plumbing.auth import OPEN_TENANT
from services.edge.tasks.events import client_gone, follow, sse_response, view_loader
from services.edge.tasks.feeds import FEEDS, Event
from shared import metrics, tasks
from shared.redis_conn import UNAVAILABLE
from shared.timeutil import iso

LIVE_CAP = 12  # tasks followed at once on one page: what a screen shows, not what runs
SCAN_PER_TENANT = 200  # the oldest active tasks of each tenant looked at for running ones
MAX_TENANTS = 1000
REFRESH_S = 1.0  # how often the running set is read again
TENANTS_EVERY_S = 10.0  # how often the tenants' active sets are listed again (a SCAN)
QUEUE = 2000  # events waiting to be written: a slow page slows only its own followers


def _known_sets(edge: Edge, only: str | None) -> list[str]:
    """The active sets of the tenants this edge knows (EDGE_API_KEYS, or the open tenant),
    read at every refresh: a task of theirs shows at once."""
    tenants = [only] if only is not None else sorted(
        set(edge.settings.api_keys.get().values()) or {OPEN_TENANT})
    return [edge.keys.tenant_active(t) for t in tenants]


async def _scanned_sets(edge: Edge) -> list[str]:
    """Every tenant's active set (a SCAN, so only every TENANTS_EVERY_S): tenants known only
    to another edge's keys, or to keys since removed."""
    names = []
    async for name in edge.redis.scan_iter(match=edge.keys.tenant_active_pattern(), count=500):
        names.append(name)
        if len(names) >= MAX_TENANTS:
            break
    return names


async def running(edge: Edge, sets: list[str]) -> list[dict[str, Any]]:
    """The running tasks among the oldest ``SCAN_PER_TENANT`` active ones of each tenant, oldest
    first. A tenant's tasks leave its line in order, so its running ones are its oldest (a
    task with a higher priority, run past 200 older ones, is missed)."""
    r, prefix = edge.redis, edge.keys.tenant_active("")
    async with r.pipeline(transaction=False) as p:
        for name in sets:
            p.zrange(name, 0, SCAN_PER_TENANT - 1)
        lists = await p.execute()
    pairs = [(name[len(prefix):], i) for name, ids in zip(sets, lists, strict=True) for i in ids]
    async with r.pipeline(transaction=False) as p:
        for _t, task_id in pairs:
            p.hmget(edge.keys.task(task_id), "status", "created_at", "attempts", "processor")
        rows = await p.execute()
    found = [{"id": i, "tenant": t, "status": s, "created_at": int(c or 0),
              "attempts": int(a or 0), "processor": proc}
             for (t, i), (s, c, a, proc) in zip(pairs, rows, strict=True) if s == tasks.RUNNING]
    found.sort(key=lambda row: row["created_at"])
    for row in found:
        row["created_at"] = iso(row["created_at"])
    return found


def _frame(kind: str, data: str) -> bytes:
    # ``data`` is one line of JSON: its newlines, if any, are whitespace outside strings.
    return f"event: {kind}\ndata: {data.replace(chr(10), ' ')}\n\n".encode()


def _task_frame(task_id: str, event: Event) -> bytes:
    return _frame(event.type, f'{{"task":"{task_id}","data":{event.data or "null"}}}')


async def live_events(request: web.Request) -> web.StreamResponse:
    edge, only = edge_of(request), dashboard.scope(request)
    feeds = request.app[FEEDS]
    out: asyncio.Queue[bytes] = asyncio.Queue(QUEUE)
    followers: dict[str, asyncio.Task[None]] = {}
    # Followed to their end on this stream: never again (its status may read "running" a
    # moment after its terminal event; following it again would replay its tokens).
    ended: set[str] = set()

    async def pump(task_id: str, tenant: str) -> None:
        """One task's events into ``out``, up to its terminal one."""
        events = follow(feeds, edge.keys.events(task_id), None,
                        view_loader(edge, tenant, task_id))
        with contextlib.suppress(*UNAVAILABLE, RedisError):
            async with contextlib.aclosing(events):
                async for event in events:
                    if event is not None:
                        await out.put(_task_frame(task_id, event))

    resp = sse_response()
    await resp.prepare(request)
    scanned: list[str] = []
    sets_at = next_refresh = 0.0
    async with metrics.sse_client(), asyncio.TaskGroup() as group:
        try:
            while not client_gone(request) and not feeds.closed:
                now = time.monotonic()
                chunk: bytes | None = None
                if now >= next_refresh:
                    try:
                        if only is None and now - sets_at >= TENANTS_EVERY_S:
                            scanned, sets_at = await _scanned_sets(edge), now
                        sets = list(dict.fromkeys([*_known_sets(edge, only), *scanned]))
                        found = await running(edge, sets)
                    except (*UNAVAILABLE, RedisError):
                        break  # the page opens the stream again
                    ended.intersection_update(r["id"] for r in found)  # bounded: running ones
                    for task_id in [t for t, f in followers.items() if f.done()]:
                        del followers[task_id]
                        ended.add(task_id)
                    for row in found:
                        if len(followers) >= LIVE_CAP:
                            break
                        if row["id"] not in followers and row["id"] not in ended:
                            followers[row["id"]] = group.create_task(
                                pump(row["id"], row["tenant"]), name=f"live {row['id']}")
                    following = [r for r in found if r["id"] in followers]
                    chunk = _frame("tasks", orjson.dumps({
                        "following": following, "running": len(found),
                        "cap": LIVE_CAP}).decode())
                    next_refresh = now + REFRESH_S
                else:
                    with contextlib.suppress(TimeoutError):
                        chunk = await asyncio.wait_for(out.get(), next_refresh - now)
                if chunk is None:
                    continue
                try:
                    await resp.write(chunk)
                except ConnectionResetError:
                    break
        finally:
            for follower in followers.values():
                follower.cancel()
    return resp

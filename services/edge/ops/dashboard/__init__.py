"""The dashboard at /dashboard: static HTML/CSS/JS (no build step, nothing from the internet)
and the JSON it reads under /api/admin/. An admin key (EDGE_ADMIN_KEYS) sees every tenant; a
tenant's key sees only its own tasks; an edge with no keys is open, and the page says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from services.edge.context import edge_of
from services.edge.ops.dashboard import figures as overview_figures
from services.edge.ops.dashboard import live as live_stream  # reads scope() at call time
from services.edge.ops.dashboard import story
from services.edge.ops.status import last_error, provider_health, provider_view, tenant_counts
from services.edge.plumbing.auth import TENANT, is_admin, scope
from services.edge.plumbing.replies import json_response
from services.edge.tasks import dead_letters, events, service, waiting
from shared import figures, metrics, rollup, tasks
from shared.governor import read_providers
from shared.redis_conn import hash_of
from shared.timeutil import iso, now_ms

STATIC = Path(__file__).parent / "static"
LIVE_LIMIT = 200


async def page(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def overview(request: web.Request) -> web.Response:
    """The overview: every tenant's figures, the processes and the history for an admin key;
    for a tenant's key its own tasks by state, its own waiting room and its own last error
    (the processes, the history and the calls of every tenant are the operator's)."""
    edge, only = edge_of(request), scope(request)
    k, r, now = edge.keys, edge.redis, now_ms()
    if only is None:
        await figures.refresh_queue(r, k)  # the gauges the admin's depth is read from
    async with r.pipeline(transaction=False) as p:
        p.zrange(k.processors_alive, 0, -1, withscores=True)
        p.hgetall(k.processors_free)
        p.hgetall(k.processors_inflight)
        p.zrange(k.coordinators_alive, 0, -1, withscores=True)
        p.get(k.batch_deadline)
        procs, free, inflight, coords, deadline = await p.execute()
    ai = await hash_of(r, k.ai_status)
    hb = edge.settings.batching
    admin = only is None
    if only is None:
        depth = {s: int(metrics.queue_depth.labels(s)._value.get())
                 for s in metrics.DEPTH_STATES}
        depth["dead"] = int(metrics.dead_letters._value.get())
    else:
        mine = await tenant_counts(edge, only)
        depth = {"queued": mine.queued, "waiting": mine.waiting, "batched": mine.batched,
                 "running": mine.running, "dead": len(await _dead_letters(request))}
    return json_response({
        "access": "open" if edge.settings.open_admin else ("admin" if is_admin(request)
                                                           else "tenant"),
        "tenant": only,
        "depth": depth,
        "why_waiting": _why(depth, sum(int(free.get(n, 0)) for n, exp in procs if exp > now),
                            hb.batch_size, deadline, now),
        "waiting_room": {"size": depth["waiting"],
                         "flush_at": iso(deadline) if deadline and depth["waiting"] else None,
                         "batch_size": hb.batch_size, "timeout_ms": hb.batch_timeout_ms,
                         "adaptive": hb.batch_adaptive},
        "waiting_by_tenant": await _waiting_by_tenant(request),
        # The processes are the operator's: a tenant's key sees none of their names.
        "processors": [{"name": n, "alive": exp > now, "free": int(free.get(n, 0)),
                        "busy": int(inflight.get(n, 0)),
                        "heartbeat_expires_at": iso(int(exp))}
                       for n, exp in procs] if admin else [],
        "coordinators": [{"name": n, "alive": exp > now, "heartbeat_expires_at": iso(int(exp))}
                         for n, exp in coords] if admin else [],
        "provider": {"model": edge.settings.provider.ai_model,
                     "streaming": None if "streaming" not in ai else ai["streaming"] == "1",
                     "last_success_at": iso(ai.get("success_at")),
                     **last_error(ai, only),
                     # The provider governor's state: window, calls in flight, pause, 429s.
                     "pacing": [provider_view(v, only)
                                for v in await read_providers(r, k, now)],
                     # Each provider's breaker, as /api/health tells it (its last error is
                     # the provider's words, which may quote a request: an admin's alone).
                     "breakers": {name: b if admin else {**b, "last_error": None}
                                  for name, b in (await provider_health(edge)).items()}},
        # The per-minute rollup counts every tenant's work: an admin's alone.
        "history": [_minute(m) for m in await rollup.history(r, k, 60)] if admin else [],
        "timestamp": iso(now),
    })


def _minute(m: dict[str, float]) -> dict[str, Any]:
    """One minute of the history: its start as ISO, whole numbers as integers."""
    return {k: iso(int(v)) if k == "t" else int(v) if float(v).is_integer() else v
            for k, v in m.items()}


def _why(depth: dict[str, int], free: int, size: int, deadline: Any, now: int) -> list[str]:
    """Plain words for why tasks wait."""
    out = []
    if depth["waiting"]:
        left = max(0, int(deadline or now) - now)
        out.append(f"{depth['waiting']} task(s) in the waiting room: they leave in "
                   f"fair order, in batches of up to {size}, as soon as a processor and the "
                   f"provider have room (adaptive), or one batch in {left / 1000:.1f} s on the "
                   "timer")
    if depth["batched"] and free <= 0:
        out.append(f"{int(depth['batched'])} task(s) flushed, waiting for a free processor slot")
    if depth["queued"]:
        out.append(f"{int(depth['queued'])} task(s) not yet read by a coordinator")
    return out or ["nothing waits"]


async def _active(request: web.Request) -> dict[str, list[str]]:
    """Queued or running task ids per tenant (its active set), newest last."""
    edge, only = edge_of(request), scope(request)
    k, r = edge.keys, edge.redis
    if only is not None:
        names = [k.tenant_active(only)]
    else:
        names = [n async for n in r.scan_iter(match=k.tenant_active_pattern(), count=500)]
    prefix = k.tenant_active("")
    out: dict[str, list[str]] = {}
    for name in names[:1000]:
        ids: Any = await r.zrange(name, -LIVE_LIMIT, -1)
        if ids:
            out[name[len(prefix):]] = ids
    return out


async def _waiting_by_tenant(request: web.Request) -> dict[str, int]:
    """Tasks not yet finished per tenant: the size of its active set (not the at most
    LIVE_LIMIT ids _active reads of it)."""
    edge, only = edge_of(request), scope(request)
    k, r = edge.keys, edge.redis
    names = [k.tenant_active(only)] if only is not None else [
        n async for n in r.scan_iter(match=k.tenant_active_pattern(), count=500)][:1000]
    async with r.pipeline(transaction=False) as p:
        for name in names:
            p.zcard(name)
        sizes = await p.execute()
    prefix = k.tenant_active("")
    return {name[len(prefix):]: int(n) for name, n in zip(names, sizes, strict=True) if n}


async def live(request: web.Request) -> web.Response:
    """Tasks queued or running, with their state: the live view follows their events."""
    edge, admin = edge_of(request), scope(request) is None
    active = await _active(request)
    pairs = [(t, i) for t, ids in active.items() for i in ids][-LIVE_LIMIT:]
    async with edge.redis.pipeline(transaction=False) as p:
        for _t, task_id in pairs:
            p.hmget(edge.keys.task(task_id), "status", "created_at", "attempts", "processor")
        rows = await p.execute()
    return json_response({"data": [
        {"id": i, "tenant": t, "status": s, "created_at": iso(c), "attempts": int(a or 0),
         "processor": proc if admin else None}  # process names: the operator's
        for (t, i), (s, c, a, proc) in zip(pairs, rows, strict=True)
        if s is not None]})


DEAD_LIMIT = 200
_DEAD_SQL = ("SELECT id, tenant, status, error, attempts, completed_at FROM tasks "
             "WHERE status = 'failed' ORDER BY completed_at DESC LIMIT ?")


async def _dead_letters(request: web.Request) -> list[dict[str, Any]]:
    """The newest dead letters of the key's tenant (an admin: all), from the store (the durable
    list: Redis forgets a finished task after its retention, and a Redis restored from an older
    file may never have seen it); each with its status in Redis when Redis still has the task
    (a retried one runs again)."""
    edge, only = edge_of(request), scope(request)
    rows = (await edge.store.list_failed(only, DEAD_LIMIT) if only is not None
            else await edge.store.fetch(_DEAD_SQL, DEAD_LIMIT))
    async with edge.redis.pipeline(transaction=False) as p:
        for row in rows:
            p.hget(edge.keys.task(row["id"]), "status")
        now = await p.execute()
    return [{"id": r["id"], "tenant": r["tenant"], "status": s or r["status"],
             "error": tasks.loads_or_none(r["error"]), "attempts": int(r["attempts"] or 0),
             "failed_at": iso(r["completed_at"])} for r, s in zip(rows, now, strict=True)]


async def dead(request: web.Request) -> web.Response:
    return json_response({"data": await _dead_letters(request)})


async def _tenant_of_task(request: web.Request, task_id: str) -> str:
    """The task's tenant, when this key may see it; else 404 (as for an unknown id)."""
    edge, only = edge_of(request), scope(request)
    tenant = await edge.redis.hget(edge.keys.task(task_id), "tenant") if task_id.startswith(
        "tsk_") else None
    if tenant is None and task_id.startswith("tsk_"):
        row = await edge.store.get_task(task_id)
        tenant = row["tenant"] if row else None
    if tenant is None or (only is not None and tenant != only):
        raise service.not_found()
    return str(tenant)


async def task(request: web.Request) -> web.Response:
    edge, task_id = edge_of(request), request.match_info["id"]
    tenant = await _tenant_of_task(request, task_id)
    view = await service.read(edge, tenant, task_id)
    view.update(await waiting.explain(edge, tenant, view))  # why it waits, its place in line
    h = await edge.steps.task_hash(task_id)
    raw: Any = await edge.redis.xrange(edge.keys.events(task_id), count=2000)
    # Each event with its time (a stream entry's id starts with it, in ms).
    replay = [{"id": i, "at": iso(story.at_ms(i)), "type": f.get("e"),
               "data": tasks.loads_or_none(f.get("d"))} for i, f in raw]
    admin = scope(request) is None
    # Process names are the operator's.
    told = story.timeline(raw, h if admin else {}, view, processors=admin)
    processor = h.get("processor") if admin else None
    tries = view.get("tries") or []
    if not admin:
        tries = [{**t, "processor": None} for t in tries if isinstance(t, dict)]
    # ``attempts`` is the story's list of them here; the task's count stays as attempt_count.
    body: dict[str, Any] = {**view, "tries": tries, "tenant": tenant, "processor": processor,
                            "attempt_count": view.get("attempts"), "events": replay, **told}
    if edge.settings.dashboard_show_prompts:
        if h.get("request"):
            body["request"] = orjson.loads(h["request"])
    else:
        _hide_tool_arguments(body)
    return json_response(body)


HIDDEN = "(hidden: DASHBOARD_SHOW_PROMPTS is off)"


def _hide_tool_arguments(body: dict[str, Any]) -> None:
    """Tool calls' arguments (they may carry what the prompt did: names, keys, records) are
    shown only under DASHBOARD_SHOW_PROMPTS, like the request; the rest of the answer is."""
    result = body.get("result") or {}
    calls = [*(result.get("tool_calls") or [])]
    for choice in result.get("choices") or []:
        calls += choice.get("tool_calls") or []
    for event in body.get("events") or []:
        if event.get("type") == "choice" and isinstance(event.get("data"), dict):
            calls += (event["data"].get("delta") or {}).get("tool_calls") or []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and function.get("arguments"):
            function["arguments"] = HIDDEN


async def task_events(request: web.Request) -> web.StreamResponse:
    """The task's live events, as /api/tasks/{id}/events gives them to its tenant."""
    request[TENANT] = await _tenant_of_task(request, request.match_info["id"])
    return await events.task_events(request)


async def retry(request: web.Request) -> web.Response:
    task_id = request.match_info["id"]
    return await dead_letters.retry(request, await _tenant_of_task(request, task_id), task_id)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/dashboard", page)
    r.add_static("/dashboard/static", STATIC)
    r.add_get("/api/admin/overview", overview)
    r.add_get("/api/admin/figures", overview_figures.figures)
    r.add_get("/api/admin/live", live)
    r.add_get("/api/admin/live/events", live_stream.live_events)
    r.add_get("/api/admin/dead-letters", dead)
    r.add_get("/api/admin/tasks/{id}", task)
    r.add_get("/api/admin/tasks/{id}/events", task_events)
    r.add_post("/api/admin/tasks/{id}/retry", retry)

"""The dashboard at /dashboard: static HTML/CSS/JS (no build step, nothing from the internet)
and the JSON it reads under /api/admin/. An admin key (EDGE_ADMIN_KEYS) sees every tenant; a
tenant's key sees only its own tasks; an edge with no keys is open, and the page says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from services.edge.context import edge_of
from services.edge.plumbing.auth import TENANT, is_admin, tenant_of
from services.edge.tasks import dead_letters, events, service
from services.edge.tasks.views import json_response
from shared import figures, metrics, rollup, tasks
from shared.governor import read_providers
from shared.redis_conn import hash_of
from shared.timeutil import iso, now_ms

STATIC = Path(__file__).parent / "static"
LIVE_LIMIT = 200


def scope(request: web.Request) -> str | None:
    """None: every tenant (an admin); else the one tenant whose tasks this key may see."""
    return None if is_admin(request) else tenant_of(request)


async def page(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def overview(request: web.Request) -> web.Response:
    edge = edge_of(request)
    k, r, now = edge.keys, edge.redis, now_ms()
    await figures.refresh_queue(r, k)
    async with r.pipeline(transaction=False) as p:
        p.zrange(k.processors_alive, 0, -1, withscores=True)
        p.hgetall(k.processors_free)
        p.hgetall(k.processors_inflight)
        p.zrange(k.coordinators_alive, 0, -1, withscores=True)
        p.get(k.batch_deadline)
        procs, free, inflight, coords, deadline = await p.execute()
    ai = await hash_of(r, k.ai_status)
    hb = edge.settings.batching
    depth = {s: metrics.queue_depth.labels(s)._value.get()
             for s in ("queued", "open_batch", "batched", "running", "dead")}
    waiting = await _waiting_by_tenant(request)
    return json_response({
        "access": "open" if edge.settings.open_admin else ("admin" if is_admin(request)
                                                           else "tenant"),
        "tenant": scope(request),
        "depth": depth,
        "why_waiting": _why(depth, sum(int(free.get(n, 0)) for n, exp in procs if exp > now),
                            hb.batch_size, deadline, now),
        "open_batch": {"size": depth["open_batch"], "flush_at": iso(deadline) if deadline
                       else None, "batch_size": hb.batch_size,
                       "timeout_ms": hb.batch_timeout_ms, "adaptive": hb.batch_adaptive},
        "waiting_by_tenant": waiting,
        "processors": [{"name": n, "alive": exp > now, "free": int(free.get(n, 0)),
                        "busy": int(inflight.get(n, 0)),
                        "heartbeat_expires_at": iso(int(exp))} for n, exp in procs],
        "coordinators": [{"name": n, "alive": exp > now, "heartbeat_expires_at": iso(int(exp))}
                         for n, exp in coords],
        "provider": {"model": edge.settings.provider.ai_model,
                     "streaming": None if "streaming" not in ai else ai["streaming"] == "1",
                     "last_success_at": iso(ai.get("success_at")),
                     **_last_error(ai, scope(request)),
                     # The provider governor's state: window, calls in flight, pause, 429s.
                     "pacing": await read_providers(r, k, now)},
        "history": await rollup.history(r, k, 60),
        "timestamp": iso(now),
    })


def _last_error(ai: dict[str, str], only: str | None) -> dict[str, Any]:
    """The provider's last error this key may see: errors are kept per tenant (a message may
    quote the request that caused it), an admin sees the latest of any tenant's."""
    tenants = [only] if only is not None else [
        k.removeprefix("error_at:") for k in ai if k.startswith("error_at:")]
    latest = max(tenants, key=lambda t: int(ai.get(f"error_at:{t}") or 0), default=None)
    if latest is None or f"error:{latest}" not in ai:
        return {"last_error": None, "last_error_at": None}
    return {"last_error": ai[f"error:{latest}"], "last_error_at": iso(ai[f"error_at:{latest}"])}


def _why(depth: dict[str, float], free: int, size: int, deadline: Any, now: int) -> list[str]:
    """Plain words for why tasks wait."""
    out = []
    if depth["open_batch"]:
        left = max(0, int(deadline or now) - now)
        out.append(f"{int(depth['open_batch'])} task(s) in the waiting room: they leave in "
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
    return {t: len(ids) for t, ids in (await _active(request)).items()}


async def live(request: web.Request) -> web.Response:
    """Tasks queued or running, with their state: the live view follows their events."""
    edge = edge_of(request)
    active = await _active(request)
    pairs = [(t, i) for t, ids in active.items() for i in ids][-LIVE_LIMIT:]
    async with edge.redis.pipeline(transaction=False) as p:
        for _t, task_id in pairs:
            p.hmget(edge.keys.task(task_id), "status", "created_at", "attempts", "processor")
        rows = await p.execute()
    return json_response({"data": [
        {"id": i, "tenant": t, "status": s, "created_at": iso(c), "attempts": int(a or 0),
         "processor": proc} for (t, i), (s, c, a, proc) in zip(pairs, rows, strict=True)
        if s is not None]})


async def dead(request: web.Request) -> web.Response:
    edge, only = edge_of(request), scope(request)
    ids: Any = await edge.redis.zrevrange(edge.keys.dead_letters, 0, 199)
    async with edge.redis.pipeline(transaction=False) as p:
        for task_id in ids:
            p.hmget(edge.keys.task(task_id), "tenant", "status", "error", "attempts",
                    "completed_at")
        rows = await p.execute()
    return json_response({"data": [
        {"id": i, "tenant": t, "status": s, "error": tasks.loads_or_none(e),
         "attempts": int(a or 0), "failed_at": iso(c)}
        for i, (t, s, e, a, c) in zip(ids, rows, strict=True)
        if t is not None and (only is None or t == only)]})


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
    h = await edge.steps.task_hash(task_id)
    raw: Any = await edge.redis.xrange(edge.keys.events(task_id), count=2000)
    replay = [{"id": i, "type": f.get("e"), "data": tasks.loads_or_none(f.get("d"))}
              for i, f in raw]
    body: dict[str, Any] = {**view, "tenant": tenant, "processor": h.get("processor"),
                            "events": replay}
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
    r.add_get("/api/admin/live", live)
    r.add_get("/api/admin/dead-letters", dead)
    r.add_get("/api/admin/tasks/{id}", task)
    r.add_get("/api/admin/tasks/{id}/events", task_events)
    r.add_post("/api/admin/tasks/{id}/retry", retry)

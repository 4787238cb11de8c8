"""Why a task waits, for ``GET /api/tasks/{id}``: its place in its tenant's line and what it
waits for (the batch timer, a processor, the provider's capacity, a pause the provider asked
for, or its quota). Read only for tasks not yet finished; a few plain reads, no script."""

from __future__ import annotations

from typing import Any

import orjson

from services.edge.context import Edge
from shared import tasks
from shared.governor import provider_id
from shared.timeutil import iso, now_ms

# admit.lua's reasons -> what a client reads
_REASONS = {"capacity": "provider_capacity", "paused": "provider_pause",
            "requests": "provider_quota", "tokens": "provider_quota",
            "rpm": "provider_quota", "tpm": "provider_quota"}
MAX_SCAN = 2000  # tasks ahead looked at one by one; beyond, the position counts them all


async def explain(edge: Edge, tenant: str, view: dict[str, Any]) -> dict[str, Any]:
    """``queue_position`` and ``waiting_for`` for a task not yet sent to the provider."""
    status = view["status"]
    if status in tasks.TERMINAL:
        return {}
    k, r, task_id = edge.keys, edge.redis, view["id"]
    h = await edge.steps.task_hash(task_id)
    if status == tasks.RUNNING and not h.get("waiting_for"):
        return {"queue_position": None, "waiting_for": None}  # with the provider now
    waiting: dict[str, Any]
    if h.get("waiting_for"):  # a processor holds it and waits for the governor
        until = int(h.get("waiting_until") or 0)
        waiting = {"reason": _REASONS.get(h["waiting_for"], h["waiting_for"]),
                   "detail": h["waiting_for"], "until": iso(until) if until else None}
    elif status == tasks.QUEUED and h.get("open") and not edge.settings.batching.batch_adaptive:
        due: str | None = await r.get(k.batch_deadline)  # type: ignore[assignment]
        waiting = {"reason": "batch_timer", "until": iso(due)}
    elif status == tasks.QUEUED and not h.get("open"):
        waiting = {"reason": "coordinator", "until": None}
    else:  # in the waiting room (it leaves as soon as there is room) or flushed
        waiting = await _provider_room(edge, view.get("model") or edge.settings.provider.ai_model)
    if h.get("open"):
        position = await _place_in_line(edge, tenant, task_id)
    else:
        position = await _position(edge, tenant, task_id)
    return {"queue_position": position, "waiting_for": waiting}


async def _place_in_line(edge: Edge, tenant: str, task_id: str) -> int | None:
    """1 + the tasks ahead of it in its tenant's line of the waiting room (by priority, then
    age); None once it has left the line."""
    rank: int | None = await edge.redis.zrank(  # type: ignore[assignment]
        edge.keys.waiting_line(tenant), task_id)
    return None if rank is None else rank + 1


async def _provider_room(edge: Edge, model: str) -> dict[str, Any]:
    """Why a task no processor holds yet waits, from the providers that serve its model: the
    first with room (then a processor will take it), else a pause if every one is paused,
    else their capacity. A provider whose breaker is open has no room."""
    rooms = [await _room(edge, gid, name) for gid, name in await _governors(edge, model)]
    if not rooms or any(room is None for room in rooms):
        return {"reason": "processor", "until": None}
    paused = [room for room in rooms if room]
    if len(paused) == len(rooms):
        return {"reason": "provider_pause", "until": iso(min(paused))}
    return {"reason": "provider_capacity", "until": None}


async def _governors(edge: Edge, model: str) -> list[tuple[str, str | None]]:
    """(governor id, provider name) of each provider serving ``model``, as the processors
    registered them (the edge holds no provider key, and a governor's id is made with it).
    From PROVIDERS_FILE, by the providers of the model's routes; without it, the one
    provider's governor for the model."""
    routing = edge.settings.routing
    if routing.file is not None:
        names = [route.provider for route in routing.routes(model)]
        index: dict[str, str] = await edge.redis.hgetall(  # type: ignore[assignment]
            edge.keys.governors)
        by_name: dict[str, str] = {}
        for gid, raw in index.items():
            name = orjson.loads(raw).get("provider")
            if name in names:
                by_name.setdefault(name, gid)
        # A provider no processor registered yet: nothing known, a processor will tell.
        return [(by_name[n], n) if n in by_name else ("", n) for n in names]
    p = edge.settings.provider
    return [(provider_id(p.ai_base_url.get(), p.ai_api_key.get() if p.ai_api_key else None,
                         model), None)]


async def _room(edge: Edge, gid: str, name: str | None) -> int | None:
    """None when the provider has room (or nothing is known of it), else 0 while it is full,
    or the epoch ms its pause (or its open breaker) ends."""
    if not gid:
        return None
    k, now = edge.keys, now_ms()
    async with edge.redis.pipeline(transaction=False) as pipe:
        pipe.hmget(k.governor(gid), ["pause_until", "limit", "window"])
        pipe.zcount(k.governor_slots(gid), now, "+inf")
        if name is not None:
            pipe.hmget(k.breaker(name), ["state", "open_until"])
        (pause, limit, window), in_flight, *breaker = await pipe.execute()
    if pause and int(float(pause)) > now:
        return int(float(pause))
    if breaker and breaker[0][0] == "open" and int(breaker[0][1] or 0) > now:
        return int(breaker[0][1])
    room = int(limit or float(window or 0) or 0)
    return 0 if room and in_flight >= room else None


async def _position(edge: Edge, tenant: str, task_id: str) -> int | None:
    """1 + the tenant's tasks submitted before this one that have not started yet."""
    active = edge.keys.tenant_active(tenant)
    found: int | None = await edge.redis.zrank(active, task_id)  # type: ignore[assignment]
    if found is None:
        return None
    rank = int(found)
    if rank > MAX_SCAN:
        return rank + 1
    ahead: list[str] = (await edge.redis.zrange(active, 0, rank - 1)  # type: ignore[assignment]
                        if rank else [])
    if not ahead:
        return 1
    async with edge.redis.pipeline(transaction=False) as pipe:
        for t in ahead:
            pipe.hmget(edge.keys.task(t), ["status", "waiting_for"])
        states = await pipe.execute()
    waiting = sum(1 for status, wf in states
                  if status in (tasks.QUEUED, tasks.BATCHED) or (status == tasks.RUNNING and wf))
    return waiting + 1

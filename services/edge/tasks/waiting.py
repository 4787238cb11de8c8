"""Why a task waits, for ``GET /api/tasks/{id}``: its place in its tenant's line and what it
waits for (the batch timer, a processor, the provider's capacity, a pause the provider asked
for, or its quota). Read only for tasks not yet finished; a few plain reads, no script."""

from __future__ import annotations

from typing import Any

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
    p, k, now = edge.settings.provider, edge.keys, now_ms()
    provider = provider_id(p.ai_base_url.get(), p.ai_api_key.get() if p.ai_api_key else None, model)
    async with edge.redis.pipeline(transaction=False) as pipe:
        pipe.hmget(k.governor(provider), ["pause_until", "limit", "window"])
        pipe.zcount(k.governor_slots(provider), now, "+inf")
        (pause, limit, window), in_flight = await pipe.execute()
    if pause and int(float(pause)) > now:
        return {"reason": "provider_pause", "until": iso(int(float(pause)))}
    room = int(limit or float(window or 0) or 0)
    if room and in_flight >= room:
        return {"reason": "provider_capacity", "until": None}
    return {"reason": "processor", "until": None}


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

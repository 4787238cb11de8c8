"""Health and monitoring: /api/health, /api/async-status, /api/ai-status."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from services.edge.context import Edge, edge_of
from services.edge.ops.provider_probe import PROBE
from services.edge.plumbing.auth import scope
from services.edge.plumbing.replies import json_response
from shared import tasks
from shared.governor import read_providers
from shared.keys import BATCHES_GROUP, TASKS_GROUP
from shared.redis_conn import hash_of, memory
from shared.timeutil import iso, now_ms

# Past this share of maxmemory, /api/health says "degraded" (state "high") before submits start
# getting 503 queue_full (state "full").
MEMORY_HIGH = 0.9


async def redis_memory(edge: Edge) -> dict[str, Any]:
    """Memory pressure of the Redis holding the queue: ``state`` is ``ok``, ``high``, ``full``
    (writes refused: submits get 503 queue_full), or ``unknown`` (INFO failed or is disabled)."""
    try:
        m = await asyncio.wait_for(memory(edge.redis, edge.keys.tasks_stream), timeout=2)
    except Exception as exc:  # a probe: any failure only means we cannot tell
        return {"state": "unknown", "error": type(exc).__name__}
    share = m.used / m.limit if m.limit else None
    state = "full" if m.full else "high" if share is not None and share >= MEMORY_HIGH else "ok"
    return {"state": state, "used_bytes": m.used, "maxmemory_bytes": m.limit or None,
            "used_percent": round(share * 100, 1) if share is not None else None}


async def health(request: web.Request) -> web.Response:
    edge = edge_of(request)
    checks: dict[str, str] = {}
    for name, probe in (("redis", edge.redis.ping()), ("store", edge.store_check.problem())):
        try:
            problem = await asyncio.wait_for(probe, timeout=5 if name == "store" else 2)
            checks[name] = f"down: {problem}" if isinstance(problem, str) else "ok"
        except Exception as exc:  # any failure of a probe means that dependency is down
            checks[name] = f"down: {type(exc).__name__}"
    failing = [n for n, v in checks.items() if v != "ok"]
    mem = await redis_memory(edge) if checks["redis"] == "ok" else {"state": "unknown"}
    providers = await provider_health(edge) if checks["redis"] == "ok" else {}
    # A full Redis is not a down edge: reads, event streams and running tasks go on, so the
    # answer stays 200 (a 503 would make orchestrators pull or restart healthy edges, which
    # frees no memory); "degraded" and redis_memory.state say why submits get 503 queue_full.
    # A failing provider is not a down edge either: tasks wait for it, or go to another.
    sick = [name for name, p in providers.items() if p["status"] != "ok"]
    degraded = mem["state"] in ("high", "full") or bool(sick)
    body: dict[str, Any] = {
        "status": "unavailable" if failing else "degraded" if degraded else "ok",
        "checks": checks,
        "redis_memory": mem,
        "auth": "open (no EDGE_API_KEYS: anyone can submit)" if edge.settings.open_access
        else "api-keys",
    }
    if providers:
        body["providers"] = providers
    if sick:
        body["failing_providers"] = sick
    if failing:
        body["failing"] = failing
    return json_response(body, 200 if not failing else 503)


RECENT_FAILURE_MS = 60_000  # a provider whose last call failed within this is 'failing'


async def provider_health(edge: Edge) -> dict[str, dict[str, Any]]:
    """Each provider's breaker, as every processor shares it: ``open`` (its calls are
    skipped), ``probing``, ``failing`` (its last calls failed, within the last minute), or
    ``ok``; with its last error."""
    names = list(edge.settings.routing.providers)
    now = now_ms()
    try:
        async with edge.redis.pipeline(transaction=False) as p:
            for name in names:
                p.hmget(edge.keys.breaker(name), ["state", "failures", "error", "error_at",
                                                  "open_until"])
            rows = await asyncio.wait_for(p.execute(), timeout=2)
    except Exception:  # a probe: we cannot tell
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, (state, failures, error, error_at, open_until) in zip(names, rows, strict=True):
        recent = bool(error_at) and now - int(error_at) < RECENT_FAILURE_MS
        status = ("open" if state == "open" else "probing" if state == "half_open"
                  else "failing" if int(failures or 0) > 0 and recent else "ok")
        out[name] = {"status": status, "failures_in_a_row": int(failures or 0),
                     "open_until": iso(open_until) if state == "open" else None,
                     "last_error": error if status != "ok" else None,
                     "last_error_at": iso(error_at) if status != "ok" else None}
    return out


async def _group(redis: Any, stream: str, group: str) -> dict[str, int]:
    try:
        groups = await redis.xinfo_groups(stream)
    except RedisError:
        return {"lag": 0, "pending": 0}
    for g in groups:
        if g["name"] == group:
            return {"lag": int(g.get("lag") or 0), "pending": int(g.get("pending") or 0)}
    return {"lag": 0, "pending": 0}


async def async_status(request: web.Request) -> web.Response:
    """Queue, batch and replica figures: every tenant's for an admin key; for a tenant's key
    its own tenant's (figures that only exist for the whole deployment, which would show other
    tenants' work, are null; the processes' health and the settings are shown to all)."""
    edge, only = edge_of(request), scope(request)
    k, r, now = edge.keys, edge.redis, now_ms()
    async with r.pipeline(transaction=False) as p:
        p.zrangebyscore(k.processors_alive, now, "+inf")
        p.zcount(k.coordinators_alive, now, "+inf")
        p.hgetall(k.processors_free)
        p.hgetall(k.processors_inflight)
        p.get(k.waiting_count)
        p.get(k.batch_deadline)
        p.get(k.batch_backlog)
        p.hgetall(k.stats)
        procs, coords, free, inflight, open_len, deadline, backlog, stats = await p.execute()
    b = edge.settings.batching
    body: dict[str, Any] = {
        "status": "ok",
        "scope": "all" if only is None else "tenant",
        "coordinators": {"alive": coords > 0, "count": coords},
        "processors": {"alive": len(procs) > 0, "count": len(procs)},
        "settings": {"batchSize": b.batch_size, "batchTimeoutMs": b.batch_timeout_ms,
                     "batchAdaptive": b.batch_adaptive, "lockTtlMs": b.lock_ttl_ms,
                     "aiTimeoutS": edge.settings.provider.ai_timeout_s},
        "batchProcessing": True,
        "streamingSupport": True,
        "fallbackSupport": True,
        "timestamp": iso(now),
    }
    if only is not None:
        mine = await tenant_counts(edge, only)
        body["processors"].update(free_capacity=None, tasks_in_flight=mine.running)
        body.update(
            queue={"depth": mine.queued},
            open_batch={"size": mine.waiting,
                        "flush_at": iso(deadline) if deadline and mine.waiting else None},
            batches={"waiting": None, "in_flight": None, "tasks_waiting": mine.batched},
            stats={},
            tenants={only: mine.seed_view()} if mine.total else {})
        return json_response(body)
    tasks_q = await _group(r, k.tasks_stream, TASKS_GROUP)
    batches_q = await _group(r, k.batches_stream, BATCHES_GROUP)
    body["processors"].update(free_capacity=sum(int(free.get(p, 0)) for p in procs),
                              tasks_in_flight=sum(int(inflight.get(p, 0)) for p in procs))
    body.update(
        queue={"depth": tasks_q["lag"] + tasks_q["pending"]},
        open_batch={"size": int(open_len or 0), "flush_at": iso(deadline) if deadline else None},
        batches={"waiting": batches_q["lag"], "in_flight": batches_q["pending"],
                 "tasks_waiting": int(backlog or 0)},
        stats={key: int(v) for key, v in stats.items()},
        tenants=await _tenants(edge))
    return json_response(body)


MAX_TENANTS, MAX_TASKS_LOOKED_AT = 100, 5000


@dataclass(frozen=True, slots=True)
class TenantCounts:
    """One tenant's queued or running tasks (its active set), by where they are."""
    queued: int   # not yet placed by a coordinator (and any past MAX_TASKS_LOOKED_AT)
    waiting: int  # in the waiting room, not yet flushed into a batch
    batched: int  # in a flushed batch, or held by a processor waiting for the provider
    running: int  # calling the provider

    @property
    def total(self) -> int:
        return self.queued + self.waiting + self.batched + self.running

    def seed_view(self) -> dict[str, int]:
        """As ``tenants`` has always shown a tenant: queued (all but running) and running."""
        return {"queued": self.total - self.running, "running": self.running}


async def tenant_counts(edge: Edge, tenant: str,
                        budget: int = MAX_TASKS_LOOKED_AT) -> TenantCounts:
    """The tenant's tasks by where they are, from its active set and its line in the waiting
    room; statuses are read one by one up to ``budget`` (past that, the rest count as
    queued)."""
    r, k = edge.redis, edge.keys
    async with r.pipeline(transaction=False) as p:
        p.zcard(k.tenant_active(tenant))
        p.zcard(k.waiting_line(tenant))
        total, in_room = await p.execute()
    ids: Any = (await r.zrange(k.tenant_active(tenant), 0, budget - 1)
                if budget > 0 and total else [])
    async with r.pipeline(transaction=False) as p:
        for t in ids:
            p.hmget(k.task(t), ["status", "waiting_for"])
        states = await p.execute() if ids else []
    running = sum(1 for st, wf in states if st == tasks.RUNNING and not wf)
    batched = sum(1 for st, wf in states if st == tasks.BATCHED
                  or (st == tasks.RUNNING and wf))
    rest = max(0, int(total) - running - batched)
    waiting = min(int(in_room), rest)
    return TenantCounts(rest - waiting, waiting, batched, running)


async def _tenants(edge: Edge) -> dict[str, dict[str, int]]:
    """Tasks queued (not yet sent to the provider) and running, per tenant with any, for an
    admin: the tenants of the first MAX_TENANTS active sets found, MAX_TASKS_LOOKED_AT
    statuses read in all."""
    r, prefix = edge.redis, edge.keys.tenant_active("")
    names: list[str] = []
    async for key in r.scan_iter(match=prefix + "*", count=500):
        names.append(key[len(prefix):])
        if len(names) >= MAX_TENANTS:
            break
    out: dict[str, dict[str, int]] = {}
    budget = MAX_TASKS_LOOKED_AT
    for name in sorted(names):
        counts = await tenant_counts(edge, name, budget)
        budget -= min(budget, counts.total)
        if counts.total:
            out[name] = counts.seed_view()
    return out


# A provider's figures that count every tenant's calls: left out (null) for a tenant's key.
_CALL_COUNTS = ("in_flight", "rate_limited_last_minute", "rate_limited_total",
                "last_rate_limited_at")


def provider_view(v: dict[str, Any], only: str | None) -> dict[str, Any]:
    """One governed provider as /api/ai-status and the dashboard show it to this key: its
    label, window, limits and pause to all (they say why tasks wait); the figures that count
    the calls of every tenant, and how much of the announced quota they left, to an admin."""
    out = {**v, "paused_until": iso(v["paused_until"]),
           "last_rate_limited_at": iso(v["last_rate_limited_at"]),
           "learned": {kind: None if x is None else {**x, "reset_at": iso(x["reset_at"])}
                       for kind, x in v["learned"].items()}}
    if only is not None:
        out.update(dict.fromkeys(_CALL_COUNTS))
        out["learned"] = {kind: None if x is None else {**x, "remaining": None}
                          for kind, x in out["learned"].items()}
    return out


def last_error(ai: dict[str, str], only: str | None) -> dict[str, Any]:
    """The provider's last error this key may see: errors are kept per tenant (a message may
    quote the request that caused it), an admin sees the latest of any tenant's."""
    tenants = [only] if only is not None else [
        k.removeprefix("error_at:") for k in ai if k.startswith("error_at:")]
    latest = max(tenants, key=lambda t: int(ai.get(f"error_at:{t}") or 0), default=None)
    if latest is None or f"error:{latest}" not in ai:
        return {"last_error": None, "last_error_at": None}
    return {"last_error": ai[f"error:{latest}"], "last_error_at": iso(ai[f"error_at:{latest}"])}


async def ai_status(request: web.Request) -> web.Response:
    edge, only = edge_of(request), scope(request)
    p = edge.settings.provider
    h = await hash_of(edge.redis, edge.keys.ai_status)
    streaming = h.get("streaming")
    return json_response({
        "base_url": str(p.ai_base_url),  # without a password it may carry
        "model": p.ai_model,
        "mock": await request.app[PROBE].is_mock(),
        # From the processors, which call the provider (None while none is alive).
        "api_key_configured": await _key_configured(edge),
        "streaming": None if streaming is None else streaming == "1",
        "streaming_checked_at": iso(h.get("streaming_at")),
        "last_success_at": iso(h.get("success_at")),
        # Only the caller's own tenant's (an admin: the latest of any): a provider's message
        # may quote the request.
        **last_error(h, only),
        "timeout_s": p.ai_timeout_s,
        # Each provider as the live processors see it (their heartbeats), never this edge's
        # environment: the key they hold, the breaker, the window, their last error.
        "routes": await _providers_seen(edge),
        # The governor's view of each provider (base URL, key fingerprint, model).
        "providers": [provider_view(v, only)
                      for v in await read_providers(edge.redis, edge.keys, now_ms())],
    })


async def _providers_seen(edge: Edge) -> list[dict[str, Any]]:
    """Each provider as the live processors last reported it, one entry per provider: the
    processors' reports side by side (a processor started with another key says so)."""
    now = now_ms()
    async with edge.redis.pipeline(transaction=False) as p:
        p.zrangebyscore(edge.keys.processors_alive, now, "+inf")
        p.hgetall(edge.keys.providers_seen)
        alive, seen = await p.execute()
    out: dict[str, dict[str, Any]] = {}
    for proc in alive:
        raw = seen.get(proc)
        if not raw:
            continue
        for entry in orjson.loads(raw)["providers"]:
            view = out.setdefault(entry["name"], {"name": entry["name"],
                                                  "base_url": entry["base_url"],
                                                  "processors": {}})
            view["processors"][proc] = {
                **{k: v for k, v in entry.items() if k not in ("name", "base_url")},
                "last_error_at": iso(entry.get("last_error_at"))}
    return list(out.values())


async def _key_configured(edge: Edge) -> bool | None:
    """Do the live processors hold a key for every provider? None while none reports."""
    views = await _providers_seen(edge)
    flags = [p["api_key_configured"] for v in views for p in v["processors"].values()]
    return all(flags) if flags else None

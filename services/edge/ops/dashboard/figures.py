"""The overview's figures, GET /api/admin/figures?range=1h|6h|24h: percentiles of queue wait,
the client's time to first token and end-to-end time, tokens per second, error and 429 rates,
the governor's window over time, per-tenant (with weights) and per-model splits, all from the
per-minute rollup (shared/rollup.py), and one line naming what holds tasks back now.

An admin key reads every figure; a tenant's key its own tenant's row and the bottleneck line
(the rollup counts every tenant's work)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from services.edge.context import Edge, edge_of
from services.edge.plumbing.auth import scope
from services.edge.plumbing.errors import ApiError
from services.edge.plumbing.replies import json_response
from shared import figures as queue_figures
from shared import metrics, rollup
from shared.governor import read_providers
from shared.redis_conn import hash_of
from shared.timeutil import iso, now_ms

RANGES = {"1h": 60, "6h": 360, "24h": 1440}
POINTS = 60  # points per chart, whatever the range
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
CACHE_S = 5.0  # a range's figures, kept this long: many open dashboards read Redis once
_cache: dict[tuple[str, str], tuple[float, list[dict[str, float]]]] = {}


async def figures(request: web.Request) -> web.Response:
    edge, only = edge_of(request), scope(request)
    span = request.query.get("range", "1h")
    if span not in RANGES:
        raise ApiError(400, "invalid_range", f"range must be one of {', '.join(RANGES)}")
    rows = await _rows(edge, span)
    now = await snapshot(edge)
    body: dict[str, Any] = {"range": span, "from": iso(int(rows[0]["t"])) if rows else None,
                            "to": iso(now_ms()), "bottleneck": bottleneck(now)}
    weights = await hash_of(edge.redis, edge.keys.tenant_weights)
    tenants = _splits(rows, "t:", weights, now.tenants_active)
    if only is not None:
        body["tenants"] = [t for t in tenants if t["tenant"] == only]
        return json_response(body)
    seconds = len(rows) * 60
    total = {f: int(sum(r.get(f, 0) for r in rows)) for f in (
        "submitted", "finished", "failed", "calls", "call_errors", "rate_limited",
        "tokens_in", "tokens_out")}
    calls = total["calls"] + total["call_errors"]
    body.update(
        latency={name: {"count": int(sum(r.get(f"{name}_n", 0) for r in rows)),
                        **{label: _round(rollup.percentile(rows, name, q))
                           for label, q in QUANTILES}}
                 for name in rollup.TIMINGS},
        totals=total,
        tokens_per_s=round((total["tokens_in"] + total["tokens_out"]) / seconds, 3),
        output_tokens_per_s=round(total["tokens_out"] / seconds, 3),
        error_rate=_ratio(total["failed"], total["finished"]),
        rate_limited_rate=_ratio(total["rate_limited"], calls),
        series=_series(rows),
        tenants=tenants,
        models=_splits(rows, "m:", {}, {}),
    )
    return json_response(body)


async def _rows(edge: Edge, span: str) -> list[dict[str, float]]:
    key, now = (edge.keys.prefix, span), time.monotonic()
    cached = _cache.get(key)
    if cached is not None and now - cached[0] < CACHE_S:
        return cached[1]
    rows = await rollup.history(edge.redis, edge.keys, RANGES[span])
    _cache[key] = (now, rows)
    return rows


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _series(rows: list[dict[str, float]]) -> list[dict[str, Any]]:
    """At most POINTS points, each over ``len(rows) / POINTS`` minutes: counts per minute,
    tokens per second, p95s, and the sampled depth and governor window (their mean)."""
    step = max(1, len(rows) // POINTS)
    out = []
    for start in range(0, len(rows), step):
        group = rows[start:start + step]
        minutes = len(group)

        def per_minute(field: str, g: list[dict[str, float]] = group, n: int = minutes
                       ) -> float:
            return round(sum(r.get(field, 0) for r in g) / n, 2)

        def sampled(field: str, g: list[dict[str, float]] = group) -> float | None:
            seen = [r[field] for r in g if field in r]
            return round(sum(seen) / len(seen), 2) if seen else None

        out.append({
            "t": iso(int(group[0]["t"])),
            "submitted": per_minute("submitted"), "finished": per_minute("finished"),
            "failed": per_minute("failed"), "rate_limited": per_minute("rate_limited"),
            "tokens_per_s": round(sum(r.get("tokens_in", 0) + r.get("tokens_out", 0)
                                      for r in group) / (60 * minutes), 3),
            **{f"{name}_p95": _round(rollup.percentile(group, name, 0.95))
               for name in ("queue_wait", "client_ttft", "e2e")},
            "depth": sampled("depth"), "window": sampled("window"),
            "in_flight": sampled("gov_in_flight"),
        })
    return out


def _splits(rows: list[dict[str, float]], prefix: str, weights: dict[str, str],
            unfinished: dict[str, int]) -> list[dict[str, Any]]:
    """Per tenant ("t:") or model ("m:"): finished, failed, tokens, mean e2e; busiest first.
    A tenant's row also has its weight (TENANT_WEIGHTS, 1 when not named) and its unfinished
    tasks now; a tenant with a weight or unfinished tasks is listed even with no work done."""
    sums: dict[str, dict[str, float]] = {}
    for r in rows:
        for field, v in r.items():
            if isinstance(field, str) and field.startswith(prefix):
                name, what = field[len(prefix):].rsplit(":", 1)
                sums.setdefault(name, {}).setdefault(what, 0.0)
                sums[name][what] += v
    key = "tenant" if prefix == "t:" else "model"
    out = []
    for name, s in sums.items():
        row: dict[str, Any] = {key: name, "finished": int(s.get("finished", 0)),
                               "failed": int(s.get("failed", 0)),
                               "tokens": int(s.get("tokens", 0)),
                               "e2e_mean_s": round(s["e2e_s"] / s["e2e_n"], 3)
                               if s.get("e2e_n") else None}
        out.append(row)
    if key == "tenant":
        for name in {*weights, *unfinished} - set(sums):
            out.append({"tenant": name, "finished": 0, "failed": 0, "tokens": 0,
                        "e2e_mean_s": None})
        for row in out:
            row["weight"] = float(weights.get(row["tenant"], 1))
            row["unfinished"] = unfinished.get(row["tenant"], 0)
    return sorted(out, key=lambda r: (-r["finished"], -r["tokens"], str(r[key])))


# --- the bottleneck ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Snapshot:
    """What holds tasks back, read now."""
    queued: int
    waiting: int
    batched: int
    running: int
    processors: int
    free_slots: int
    coordinators: int
    providers: list[dict[str, Any]]     # read_providers' views
    tenants_active: dict[str, int]      # unfinished tasks per tenant (the busiest)
    tenant_limit: int                   # TENANT_MAX_ACTIVE (0: none)


async def snapshot(edge: Edge) -> Snapshot:
    k, r, now = edge.keys, edge.redis, now_ms()
    await queue_figures.refresh_queue(r, k)
    depth = {s: int(metrics.queue_depth.labels(s)._value.get()) for s in metrics.DEPTH_STATES}
    names = [n async for n in r.scan_iter(match=k.tenant_active_pattern(), count=500)][:1000]
    async with r.pipeline(transaction=False) as p:
        for name in names:
            p.zcard(name)
        sizes = await p.execute()
    prefix = k.tenant_active("")
    return Snapshot(
        queued=depth["queued"], waiting=depth["waiting"], batched=depth["batched"],
        running=depth["running"], processors=int(metrics.processors_alive._value.get()),
        free_slots=int(metrics.processor_free_slots._value.get()),
        coordinators=int(metrics.coordinators_alive._value.get()),
        providers=await read_providers(r, k, now),
        tenants_active={n[len(prefix):]: int(s) for n, s in zip(names, sizes, strict=True)
                        if s},
        tenant_limit=edge.settings.max_active_tasks)


def bottleneck(s: Snapshot) -> str:
    """One line naming what holds tasks back now, the first that applies of: a provider
    paused or with its window full, no processor or no room on them, no coordinator, a tenant
    at its limit; else what the queue holds."""
    pending = s.queued + s.waiting + s.batched
    for p in s.providers:
        name = p.get("model") or p.get("id")
        if p.get("paused_until"):
            return f"provider {name} paused until {iso(p['paused_until'])} (Retry-After)"
        limit, in_flight = int(p.get("limit") or 0), int(p.get("in_flight") or 0)
        if limit and in_flight >= limit and (pending or s.running > in_flight):
            return f"provider window {in_flight} of {limit} full ({name})"
    if pending and not s.processors:
        return "no processor is running"
    if s.batched and s.free_slots <= 0:
        return f"no processor has room ({s.processors} processor(s), every slot busy)"
    if s.queued and not s.coordinators:
        return "no coordinator is running: new tasks are not batched"
    if s.tenant_limit:
        full = sorted(t for t, n in s.tenants_active.items() if n >= s.tenant_limit)
        if full:
            return (f"tenant {full[0]} at its limit ({s.tenant_limit} unfinished tasks)"
                    + (f", and {len(full) - 1} more" if len(full) > 1 else ""))
    if pending:
        return f"no bottleneck: {pending} task(s) on their way to the provider"
    return "nothing waits"

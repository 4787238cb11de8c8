"""Scenario 8: a provider that allows 8 calls in flight, 400 tasks of 0.5 s each, two
processors at the default concurrency (32 each): tasks/s against the limit-bound ideal
(8 / 0.5 s = 16 tasks/s), the share of provider calls answered 429, and tasks failed; then
the same run with the governor off (GOVERNOR=false: every processor calls as soon as it has a
slot, and a 429 costs an attempt)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from bench.common import Ctx, fmt_rate, loadgen, query, wait_rows
from bench.procs import redis_server, stack

LIMIT = 8
TASK_S = 0.5
IDEAL = LIMIT / TASK_S


async def one(ctx: Ctx, governor: bool, n: int) -> dict[str, Any]:
    d = ctx.dir(f"provider-limited-{'on' if governor else 'off'}")
    env = {"MOCKAI_MAX_CONCURRENCY": str(LIMIT), "MOCKAI_TTFT_MS": str(int(TASK_S * 1000)),
           "MOCKAI_TOKENS_PER_S": "0", "MOCKAI_CONTENT_TOKENS": "20",
           "MOCKAI_REASONING_TOKENS": "0", "GOVERNOR": "true" if governor else "false"}
    with redis_server(d) as r, stack(d, r.url, processors=2, env=env) as s:
        await loadgen(s.edge_url + "/api/tasks", n)
        await wait_rows(s.store_path, n, 60 + n * TASK_S, "provider-limited")
        rows = query(s.store_path, "SELECT status, created_at, completed_at FROM tasks")
        calls = (await asyncio.to_thread(httpx.get, f"{s.mock_url}/mock/requests",
                                         timeout=30)).json()["requests"]
    ok = [row for row in rows if row[0] == "succeeded"]
    span = (max(row[2] for row in rows) - min(row[1] for row in rows)) / 1000
    refused = sum(1 for c in calls if c["status"] == 429)
    return {"governor": governor, "tasks": n, "succeeded": len(ok),
            "failed": len(rows) - len(ok), "seconds": round(span, 2),
            "tasks_per_s": round(len(ok) / span, 2) if span > 0 else 0.0,
            "calls": len(calls), "refused_429": refused,
            "share_429": round(refused / len(calls), 4) if calls else 0.0}


async def run(ctx: Ctx) -> dict[str, Any]:
    n = 120 if ctx.quick else 400
    on, off = await one(ctx, True, n), await one(ctx, False, n)
    for x in (on, off):
        name = "governor on " if x["governor"] else "governor off"
        ratio = x["tasks_per_s"] / IDEAL
        good = (ratio >= 0.9 and x["share_429"] <= 0.05 and x["failed"] == 0
                if x["governor"] else None)
        ctx.row("provider-limited",
                f"{name}: tasks/s (of ideal {IDEAL:g}/s) | 429s | failed (N={n})",
                f"{fmt_rate(x['tasks_per_s'])} ({ratio:.2f}) | {x['share_429']:.1%} "
                f"({x['refused_429']} of {x['calls']} calls) | {x['failed']}",
                ">= 0.90 of ideal, <= 5% 429, 0 failed" if x["governor"] else "", good)
    ctx.notes.append(f"provider-limited: the mock allows {LIMIT} calls in flight and answers "
                     f"429 (Retry-After: 1) past that; tasks take {TASK_S} s; 2 processors "
                     "at PROCESSOR_CONCURRENCY 32; the governor learns the limit (no "
                     "PROVIDER_MAX_CONCURRENCY)")
    return {"limit": LIMIT, "task_s": TASK_S, "ideal_tasks_per_s": IDEAL, "runs": [on, off]}

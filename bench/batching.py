"""Scenario 7: batching, with BATCH_ADAPTIVE on and off, at low and high load.

BATCH_SIZE stays at its default (3); BATCH_TIMEOUT_MS is cut to 1,000 (default 30,000) so the
"off" runs finish: without adaptive flushing a batch leaves when it is full or when its timer
fires. Low load: tasks one by one at 2/s (slower than a batch fills before its timer).
High load: a burst of N tasks from the load process (50 connections). For each: mean batch
size (tasks / distinct batch ids in the store) and the latency the batcher adds, submit ->
processor start (``started_at - created_at`` of the stored rows).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from bench.common import FAST_MOCK, Ctx, fmt_rate, loadgen, query, wait_rows
from bench.procs import redis_server, stack
from bench.stats import summary

TIMEOUT_MS = 1000
LOW_RATE = 2.0


def _window(db: Any, since_ms: int) -> dict[str, Any]:
    rows = query(db, "SELECT started_at - created_at, batch_id, created_at, completed_at "
                 "FROM tasks WHERE created_at >= ?", since_ms)
    batches = {r[1] for r in rows}
    span = (max(r[3] for r in rows) - min(r[2] for r in rows)) / 1000
    return {"tasks": len(rows), "batches": len(batches),
            "mean_batch": round(len(rows) / max(len(batches), 1), 2),
            "start_ms": summary([float(r[0]) for r in rows], 1),
            "tasks_per_s": round(len(rows) / span, 1) if span > 0 else None}


async def one(ctx: Ctx, adaptive: bool, low_n: int, high_n: int) -> dict[str, Any]:
    d = ctx.dir(f"batching-{'on' if adaptive else 'off'}")
    env = {**FAST_MOCK, "BATCH_ADAPTIVE": "true" if adaptive else "false",
           "BATCH_TIMEOUT_MS": str(TIMEOUT_MS)}
    with redis_server(d) as r, stack(d, r.url, env=env) as s:
        url = s.edge_url + "/api/tasks"
        await loadgen(url, 30)  # warm-up
        await wait_rows(s.store_path, 30, 60, "batching warm-up")
        await asyncio.sleep(TIMEOUT_MS / 1000 + 0.2)  # any open batch of the warm-up leaves
        t_low = time.time_ns() // 1_000_000
        async with aiohttp.ClientSession() as http:
            for i in range(low_n):
                async with http.post(url, json={"prompt": f"low {i}"}) as resp:
                    assert resp.status == 202, await resp.text()
                await asyncio.sleep(1 / LOW_RATE)
        await wait_rows(s.store_path, 30 + low_n, 30, "batching low load")
        low = _window(s.store_path, t_low)
        await asyncio.sleep(TIMEOUT_MS / 1000 + 0.2)
        t_high = time.time_ns() // 1_000_000
        await loadgen(url, high_n)
        await wait_rows(s.store_path, 30 + low_n + high_n, 60 + high_n / 20, "batching high")
        high = _window(s.store_path, t_high)
    return {"adaptive": adaptive, "low": low, "high": high}


async def run(ctx: Ctx) -> dict[str, Any]:
    low_n, high_n = (6, 300) if ctx.quick else (12, 1000)
    runs = [await one(ctx, a, low_n, high_n) for a in (True, False)]
    for x in runs:
        name = "adaptive on " if x["adaptive"] else "adaptive off"
        lo, hi = x["low"], x["high"]
        ctx.row("batching", f"{name}, low load ({LOW_RATE:g}/s, N={low_n}): batch | start p50",
                f"{lo['mean_batch']:.2f} | {lo['start_ms']['p50']:.0f} ms "
                f"(p99 {lo['start_ms']['p99']:.0f})")
        ctx.row("batching", f"{name}, high load (burst, N={high_n}): batch | start p50 | rate",
                f"{hi['mean_batch']:.2f} | {hi['start_ms']['p50']:.0f} ms "
                f"(p99 {hi['start_ms']['p99']:.0f}) | {fmt_rate(hi['tasks_per_s'])}")
    ctx.notes.append(f"batching: BATCH_SIZE 3 (default), BATCH_TIMEOUT_MS {TIMEOUT_MS} "
                     "(default 30000, cut so the adaptive-off runs finish)")
    return {"batch_timeout_ms": TIMEOUT_MS, "low_rate": LOW_RATE, "runs": runs}

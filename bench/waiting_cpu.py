"""Diagnostic (run with ``--only waiting_cpu``): what 200 tasks waiting for a provider's window
cost while they wait. A provider that takes one call at a time, each call long (a minute), 200
tasks submitted at once: once they are all waiting, the CPU each process uses over a quiet
stretch, per second. Two ways to a window of 1: declared (PROVIDER_MAX_CONCURRENCY=1, the
tasks wait in Redis), and learned (the mock refuses a second call with a 429, the governor
starts at its initial window and learns: tasks a processor already holds wait in it); and, for
a baseline, the same stack with no task at all."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from bench.common import Ctx, loadgen
from bench.procs import CpuMeter, pid_of, pids, redis_calls, redis_server, stack

TASKS = 200
SETTLE_S = 6.0  # after the submits: the first refusals, the window learned
MEASURE_S = 10.0
CALL = {"MOCKAI_TTFT_MS": "0", "MOCKAI_TOKENS_PER_S": "10", "MOCKAI_CONTENT_TOKENS": "600",
        "MOCKAI_REASONING_TOKENS": "0"}  # 60 s a call


async def one(ctx: Ctx, how: str) -> dict[str, Any]:
    env = {**CALL, "PROVIDER_MAX_CONCURRENCY": "1"} if how == "declared" else {
        **CALL, "MOCKAI_MAX_CONCURRENCY": "1", "MOCKAI_RETRY_AFTER": "false"}
    d = ctx.dir(f"waiting-cpu-{how}")
    with redis_server(d) as r, stack(d, r.url, processors=2, env=env) as s:
        if how != "idle":
            await loadgen(s.edge_url + "/api/tasks", TASKS)
        await asyncio.sleep(SETTLE_S)
        commands = redis_calls(r.url)
        meter = CpuMeter({"edge": pids(s, "edge"), "coordinator": pids(s, "coordinator"),
                          "processors": pids(s, "processor"), "mock": pids(s, "mockai"),
                          "redis": [pid_of(r)]}).start()
        t = time.monotonic()
        calls_before = len((await asyncio.to_thread(
            httpx.get, f"{s.mock_url}/mock/requests", timeout=30)).json()["requests"])
        await asyncio.sleep(MEASURE_S)
        used = meter.stop()
        span = time.monotonic() - t
        after = redis_calls(r.url)
        calls = len((await asyncio.to_thread(
            httpx.get, f"{s.mock_url}/mock/requests", timeout=30)).json()["requests"])
        status = (await asyncio.to_thread(httpx.get, f"{s.edge_url}/api/async-status",
                                          timeout=30)).json()
    per_s = {k: round(v / span, 4) for k, v in used.items()}
    busiest = sorted(((k, round((v - commands.get(k, 0)) / span, 1)) for k, v in after.items()),
                     key=lambda kv: -kv[1])[:6]
    return {"how": how, "cpu_s_per_s": per_s, "total_cpu_s_per_s": round(sum(per_s.values()), 4),
            "provider_calls_while_measured": calls - calls_before,
            "tasks_in_flight": status["processors"]["tasks_in_flight"],
            "queue_depth": status["queue"]["depth"],
            "redis_commands_per_s": dict(busiest)}


async def run(ctx: Ctx) -> dict[str, Any]:
    runs = [await one(ctx, how) for how in ("idle", "declared", "learned")]
    for x in runs:
        ctx.row("waiting_cpu", f"window 1 ({x['how']}): CPU s/s while "
                f"{0 if x['how'] == 'idle' else TASKS} tasks wait "
                "(edge | coordinator | processors | mock | redis)",
                " | ".join(f"{x['cpu_s_per_s'][k]:.3f}" for k in
                           ("edge", "coordinator", "processors", "mock", "redis")))
    return {"tasks": TASKS, "measure_s": MEASURE_S, "runs": runs}

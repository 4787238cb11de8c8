"""Scenario: the long-call burst. 200 tasks at once, each a streamed answer of 100 tokens at 10
tokens/s (about 10 s), from a provider with no limit, each watched live by one
``GET /api/tasks/{id}/events`` client; once with the governor on (its window learned from the
default start, GOVERNOR_INITIAL_WINDOW 8), once off (GOVERNOR=false). The processor may run
all 200 at once (PROCESSOR_CONCURRENCY 200), so what holds calls back is the governor alone:
the wall time from the first submit to the last client's terminal event, and the CPU of the
edge, the coordinator, the processor and redis-server over it, on against off. Before the
window grew per first token it grew per whole answer: 72 s against 11 s, 3.4 times the CPU."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import profile
from bench.common import Ctx
from bench.long_stream import Watch, one
from bench.procs import CpuMeter, pid_of, pids, redis_server, stack

CALLS, RATE, CONTENT = 200, 10, 100
MOCK = {"MOCKAI_TTFT_MS": "100", "MOCKAI_TOKENS_PER_S": str(RATE),
        "MOCKAI_CONTENT_TOKENS": str(CONTENT), "MOCKAI_REASONING_TOKENS": "0",
        "PROCESSOR_CONCURRENCY": str(CALLS)}
SERVICES = ("edge", "coordinator", "processor", "redis")


async def burst(ctx: Ctx, governor: bool, spy: Path | None = None) -> dict[str, Any]:
    how = "on" if governor else "off"
    d = ctx.dir(f"long-burst-{how}{'-profiled' if spy else ''}")
    env = {**MOCK, "GOVERNOR": "true" if governor else "false"}
    with redis_server(d) as r, stack(d, r.url, env=env) as s, \
            profile.spying(spy, {m: pids(s, m)[0] for m in ("edge", "coordinator",
                                                             "processor")}):
        groups = {"edge": pids(s, "edge"), "coordinator": pids(s, "coordinator"),
                  "processor": pids(s, "processor"), "redis": [pid_of(r)]}
        meter = CpuMeter(groups).start()
        t0 = time.monotonic()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=300)) as http:
            deltas = await asyncio.gather(*(one(http, s.edge_url, k, Watch())
                                            for k in range(CALLS)))
        wall = time.monotonic() - t0
        cpu = meter.stop()
    return {"governor": governor, "wall_s": round(wall, 2), "cpu_s": cpu,
            "cpu_total_s": round(sum(cpu.values()), 3), "delta_events": sum(deltas)}


async def run(ctx: Ctx) -> dict[str, Any]:
    on, off = await burst(ctx, True), await burst(ctx, False)
    time_ratio = on["wall_s"] / off["wall_s"]
    cpu_ratio = on["cpu_total_s"] / off["cpu_total_s"]
    ctx.row("long-burst", f"{CALLS} streamed calls of {CONTENT / RATE:g} s, no provider "
            "limit: wall time, governor on / off",
            f"{on['wall_s']:.1f} s / {off['wall_s']:.1f} s = {time_ratio:.2f}", "<= 1.5",
            time_ratio <= 1.5)
    ctx.row("long-burst", "CPU (edge + coordinator + processor + redis), governor on / off",
            f"{on['cpu_total_s']:.1f} s / {off['cpu_total_s']:.1f} s = {cpu_ratio:.2f}",
            "<= 1.2", cpu_ratio <= 1.2)
    result: dict[str, Any] = {"calls": CALLS, "call_s": CONTENT / RATE, "runs": [on, off],
                              "time_ratio": round(time_ratio, 3),
                              "cpu_ratio": round(cpu_ratio, 3)}
    if ctx.profile is not None:
        # One more burst each way under py-spy (not counted: sampling slows the processes).
        result["profile"] = {}
        for governor in (True, False):
            out = ctx.profile / f"long-burst-{'on' if governor else 'off'}"
            out.mkdir(parents=True, exist_ok=True)
            await burst(ctx, governor, spy=out)
            result["profile"]["on" if governor else "off"] = profile.summarize_dir(out)
    return result

"""Scenario: steady load. A gateway's traffic is a closed loop, N clients each sending its
next request when its last one ends, not a burst where batches fill and calls group. Short
streamed requests (a 20-token answer from a mock that answers at once) from closed-loop
clients (``bench.steadyload``, a process of its own) at concurrency 1, 4, 16 and 64, three
ways in turn at each level, so a change in the machine's load hits all three:

* ``direct``: ``POST /v1/chat/completions`` (stream: true) on the mock itself;
* ``/v1``: the same request through the edge's OpenAI-compatible endpoint;
* ``tasks``: ``POST /api/tasks``, then its event stream ``GET /api/tasks/{id}/events``.

One stack with default settings (batch size, batch timeout, concurrency). For each level and
way: p50 and p99 of the whole request, requests/s, and CPU per request by process, from before
the first request to the last task's store row (edge, coordinator, processor, redis-server;
the mock and the client apart), and read/write system calls per request by process (round
trips and writes: unlike CPU time, a count the machine's load hardly moves). Targets at c=64:
CPU per /v1 request, /v1's requests/s over direct's, and the p99 /v1 adds to direct's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from bench import profile
from bench.common import Ctx, count_rows, fmt_rate, run_json, wait_rows
from bench.procs import (
    CpuMeter,
    Stack,
    calls_between,
    pid_of,
    pids,
    redis_calls,
    redis_server,
    stack,
)

CONTENT = 20
MOCK = {"MOCKAI_TTFT_MS": "0", "MOCKAI_TOKENS_PER_S": "0",
        "MOCKAI_CONTENT_TOKENS": str(CONTENT), "MOCKAI_REASONING_TOKENS": "0"}
LEVELS = (1, 4, 16, 64)
# Requests per level: enough for a p99 at c=64, few where a level is slow.
N = {1: 200, 4: 400, 16: 800, 64: 1500}
N_QUICK = {1: 30, 4: 60, 16: 120, 64: 200}
WAYS = ("direct", "v1", "tasks")
SERVICES = ("edge", "coordinator", "processor", "redis")
TARGET_CPU_MS, TARGET_RATIO, TARGET_ADDED_P99_MS = 1.5, 0.9, 30.0


async def client(way: str, base: str, n: int, conns: int, warmup: int) -> dict[str, Any]:
    mode = "tasks" if way == "tasks" else "v1"
    out = await run_json([sys.executable, "-m", "bench.steadyload", "--mode", mode,
                          "--url", base, "--n", str(n), "--conns", str(conns),
                          "--warmup", str(warmup)], limit_s=120 + n / 5)
    bad = {k: v for k, v in out["statuses"].items() if k != "200"}
    if bad or out["bad"]:
        raise RuntimeError(f"steady {way} c={conns}: statuses {out['statuses']}, "
                           f"{out['bad']} answers without their terminal event")
    return out


async def one(s: Stack, redis_url: str, groups: dict[str, list[int]], way: str, c: int,
              n: int, warmup: int, spy: Path | None = None) -> dict[str, Any]:
    """One level of one way: the client's figures and the services' CPU per request."""
    base = s.mock_url if way == "direct" else s.edge_url
    rows = count_rows(s.store_path)
    meter = CpuMeter(groups)
    with profile.spying(spy, {m: pids(s, m)[0] for m in ("edge", "coordinator",
                                                         "processor")}):
        calls = redis_calls(redis_url)
        meter.start()
        out = await client(way, base, n, c, warmup)
        if way != "direct":  # the last rows are written after the last answer: count them
            await wait_rows(s.store_path, rows + warmup + n, 60, f"steady {way} c={c}")
        cpu = meter.stop()
    per = {k: round(v * 1000 / n, 3) for k, v in cpu.items()}
    per["client"] = round(out["cpu_s"] * 1000 / n, 3)
    return {"way": way, "c": c, "n": n, "rate": out["rate"], "latency_ms": out["latency_ms"],
            "cpu_ms_per_request": round(sum(per[k] for k in SERVICES), 3),
            "cpu_ms_per_request_by_process": per,
            "syscalls_per_request_by_process": {k: round(v / n, 2)
                                                for k, v in meter.calls.items()},
            "redis_calls_per_request": calls_between(calls, redis_calls(redis_url), n)}


def _row(ctx: Ctx, x: dict[str, Any]) -> None:
    lat, by = x["latency_ms"], x["cpu_ms_per_request_by_process"]
    label = {"direct": "direct (mock)", "v1": "/v1 stream", "tasks": "tasks + events"}
    value = f"{fmt_rate(x['rate'])} | p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} ms"
    if x["way"] != "direct":
        calls = x["syscalls_per_request_by_process"]
        value += (f" | {x['cpu_ms_per_request']:.2f} ms CPU  ["
                  + ", ".join(f"{k} {by[k]:.2f}" for k in SERVICES)
                  + f"; mock {by['mock']:.2f}, client {by['client']:.2f}] | syscalls ["
                  + ", ".join(f"{k} {calls[k]:.1f}" for k in SERVICES) + "]")
    else:
        value += f"  [mock {by['mock']:.2f}, client {by['client']:.2f} ms CPU]"
    ctx.row("steady", f"c={x['c']} {label[x['way']]}: req/s | whole request (N={x['n']})",
            value)


async def run(ctx: Ctx) -> dict[str, Any]:
    counts = N_QUICK if ctx.quick else N
    d = ctx.dir("steady")
    results: list[dict[str, Any]] = []
    with redis_server(d) as r, stack(d, r.url, env=MOCK) as s:
        groups = {"edge": pids(s, "edge"), "coordinator": pids(s, "coordinator"),
                  "processor": pids(s, "processor"), "redis": [pid_of(r)],
                  "mock": pids(s, "mockai")}
        for way in WAYS:  # connections, imports, caches: nothing measured pays for them
            await one(s, r.url, groups, way, 16, 50, 0)
        for c in LEVELS:
            for way in WAYS:
                x = await one(s, r.url, groups, way, c, counts[c], min(c, 16))
                results.append(x)
                _row(ctx, x)
        prof = None
        if ctx.profile is not None:
            prof = await _profile(ctx, s, r.url, groups, counts[64])
    at = {x["way"]: x for x in results if x["c"] == 64}
    cpu = at["v1"]["cpu_ms_per_request"]
    ratio = at["v1"]["rate"] / at["direct"]["rate"]
    added = at["v1"]["latency_ms"]["p99"] - at["direct"]["latency_ms"]["p99"]
    ctx.row("steady", "c=64 /v1: CPU per request (edge + coordinator + processor + redis)",
            f"{cpu:.2f} ms", f"<= {TARGET_CPU_MS} ms", cpu <= TARGET_CPU_MS)
    ctx.row("steady", "c=64 /v1: req/s over direct's", f"{ratio:.2f}x", f">= {TARGET_RATIO}x",
            ratio >= TARGET_RATIO)
    ctx.row("steady", "c=64 /v1: p99 added to direct's", f"{added:.1f} ms",
            f"<= {TARGET_ADDED_P99_MS:.0f} ms", added <= TARGET_ADDED_P99_MS)
    burst = ctx.results.get("e2e", {}).get("median", {}).get("sluice")
    if burst:
        ctx.row("steady", "CPU per task: burst (e2e) | steady c=64 /v1 | c=64 tasks",
                f"{burst['cpu_ms_per_task']:.2f} | {cpu:.2f} | "
                f"{at['tasks']['cpu_ms_per_request']:.2f} ms")
    out: dict[str, Any] = {"levels": list(LEVELS), "n": counts, "content_tokens": CONTENT,
                           "runs": results, "c64_cpu_ms_per_v1_request": cpu,
                           "c64_rate_ratio": round(ratio, 3),
                           "c64_added_p99_ms": round(added, 1)}
    if prof is not None:
        out["profile"] = prof
    return out


async def _profile(ctx: Ctx, s: Stack, redis_url: str, groups: dict[str, list[int]],
                   n: int) -> dict[str, Any]:
    """Each way through Sluice once more at c=64 under py-spy (not counted: sampling slows
    the processes); the stacks go to DIR/steady-<way>/."""
    assert ctx.profile is not None
    out: dict[str, Any] = {}
    for way in ("v1", "tasks"):
        spy = ctx.profile / f"steady-{way}"
        spy.mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        await one(s, redis_url, groups, way, 64, n, 16, spy=spy)
        print(f"bench: steady profile {way} in {time.monotonic() - t:.1f} s", flush=True)
        out[way] = profile.summarize_dir(spy)
    return out

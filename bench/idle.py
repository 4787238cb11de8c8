"""Scenario 3: idle start latency. One task at a time into an idle system (fast mock, default
batching: adaptive on): submit, wait for the task's terminal event, pause, next. The figure is
the task's ``started_at - created_at`` from its Redis hash (both ms epoch, so each value is
+-1 ms): the edge's clock when it accepted the task, the processor's when it took it. The
split between the coordinator's hop and the processor's comes from the ms timestamps of the
task's queued / batched / running status events (Redis's clock)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from bench.common import FAST_MOCK, Ctx
from bench.procs import redis_server, stack
from bench.stats import summary
from shared.keys import Keys

TERMINAL_EVENTS = {"done", "error", "cancelled"}
PAUSE_S = 0.02  # between tasks, so each one meets an idle system


def _ms(entry_id: str) -> int:
    return int(entry_id.split("-")[0])


async def one(http: aiohttp.ClientSession, redis: Redis, keys: Keys,
              url: str, i: int) -> tuple[int, float, int, int]:
    loop = asyncio.get_running_loop()
    t = loop.time()
    async with http.post(url, json={"prompt": f"idle {i}"}) as resp:
        body = await resp.json()
        assert resp.status == 202, body
    post_ms = (loop.time() - t) * 1000
    task_id = body["id"]
    last = "0-0"
    status_at: dict[str, int] = {}  # status -> ms of its event's stream id (Redis's clock)
    while True:  # block on the task's own event stream: no polling
        reply: Any = await redis.xread({keys.events(task_id): last}, block=10_000)
        if not reply:
            raise TimeoutError(f"task {task_id} did not finish in 10 s")
        for _stream, entries in reply:
            for entry_id, fields in entries:
                last = entry_id
                if fields.get("e") == "status":
                    status_at[orjson.loads(fields["d"])["status"]] = _ms(entry_id)
                if fields.get("e") in TERMINAL_EVENTS:
                    created, started = await redis.hmget(keys.task(task_id),  # type: ignore[misc]
                                                         ["created_at", "started_at"])
                    queued = status_at.get("queued", 0)
                    batched = status_at.get("batched", queued)
                    return (int(started or 0) - int(created or 0), post_ms, batched - queued,
                            status_at.get("running", batched) - batched)


async def run(ctx: Ctx) -> dict[str, Any]:
    n = 50 if ctx.quick else 200
    d = ctx.dir("idle")
    with redis_server(d) as r, stack(d, r.url, env=FAST_MOCK) as s:
        redis = Redis.from_url(r.url, decode_responses=True)
        keys = Keys(s.prefix)
        url = s.edge_url + "/api/tasks"
        starts: list[float] = []
        posts: list[float] = []
        hop_coord: list[float] = []
        hop_proc: list[float] = []
        try:
            async with aiohttp.ClientSession() as http:
                for i in range(10):  # warm-up: scripts loaded, connections open
                    await one(http, redis, keys, url, -i)
                for i in range(n):
                    await asyncio.sleep(PAUSE_S)
                    start_ms, post_ms, coord_ms, proc_ms = await one(http, redis, keys, url, i)
                    starts.append(start_ms)
                    posts.append(post_ms)
                    hop_coord.append(coord_ms)
                    hop_proc.append(proc_ms)
        finally:
            await redis.aclose()
    st, po = summary(starts), summary(posts)
    hc, hp = summary(hop_coord), summary(hop_proc)
    ctx.row("idle", f"submit -> processor start p50 (N={n})", f"{st['p50']:.1f} ms", "<= 2 ms",
            st["p50"] <= 2)
    ctx.row("idle", "submit -> processor start p99", f"{st['p99']:.1f} ms", "<= 10 ms",
            st["p99"] <= 10)
    ctx.row("idle", "POST /api/tasks round trip p50 / p99 (idle)",
            f"{po['p50']:.2f} / {po['p99']:.2f} ms")
    ctx.row("idle", "  of which queued->batched | batched->running p50 (p99)",
            f"{hc['p50']:.0f} ({hc['p99']:.0f}) | {hp['p50']:.0f} ({hp['p99']:.0f}) ms")
    return {"n": n, "start_ms": st, "post_ms": po, "queued_to_batched_ms": hc,
            "batched_to_running_ms": hp, "values": starts}

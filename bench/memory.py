"""Scenario 6: memory. One processor (PROCESSOR_CONCURRENCY=1000) holding 1,000 slow streams
(the mock sends 2 tokens/s, so every stream stays open while we look). RSS idle is read after
a warm-up of fast tasks (imports, pools and caches in place); RSS in flight once 1,000 tasks
are running and every one of them has received tokens. Per in-flight task:
(RSS at 1,000 - RSS idle) / 1,000. GOVERNOR_INITIAL_WINDOW is 1,000 too: the governor's default
window (16) only grows as calls succeed, and these take minutes, so the streams never all
started (the scenario failed with ~28 in flight)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from redis.asyncio import Redis

from bench.common import BenchError, Ctx, loadgen, wait_rows
from bench.procs import pids, redis_server, rss_bytes, stack
from shared.keys import Keys

STREAMS = 1000
SLOW = {"MOCKAI_TTFT_MS": "50", "MOCKAI_TOKENS_PER_S": "2", "MOCKAI_CONTENT_TOKENS": "400",
        "MOCKAI_REASONING_TOKENS": "0"}
FAST = {"mock": {"ttft_ms": 0, "tokens_per_s": 0, "content_tokens": 40, "reasoning_tokens": 10}}


def _streaming(mock_url: str) -> int:
    records = httpx.get(f"{mock_url}/mock/requests", timeout=30).json()["requests"]
    return sum(1 for r in records if r["outcome"] == "in_progress" and r["tokens_sent"] >= 1)


async def run(ctx: Ctx) -> dict[str, Any]:
    d = ctx.dir("memory")
    env = {**SLOW, "PROCESSOR_CONCURRENCY": str(STREAMS), "DRAIN_S": "0",
           "GOVERNOR_INITIAL_WINDOW": str(STREAMS)}
    with redis_server(d) as r, stack(d, r.url, env=env) as s:
        proc = pids(s, "processor")[0]
        url = s.edge_url + "/api/tasks"
        await loadgen(url, 100, metadata=FAST)
        await wait_rows(s.store_path, 100, 60, "memory warm-up")
        await asyncio.sleep(1.0)
        idle = rss_bytes(proc)
        await loadgen(url, STREAMS)
        redis = Redis.from_url(r.url, decode_responses=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        try:
            while True:
                inflight = sum(int(v) for v in (await redis.hvals(  # type: ignore[misc]
                    Keys(s.prefix).processors_inflight)))
                streaming = await asyncio.to_thread(_streaming, s.mock_url)
                if inflight >= STREAMS and streaming >= STREAMS:
                    break
                if loop.time() > deadline:
                    raise BenchError(f"memory: {inflight} in flight, {streaming} streaming "
                                     f"after 60 s")
                await asyncio.sleep(0.5)
        finally:
            await redis.aclose()
        samples = []
        for _ in range(3):
            samples.append(rss_bytes(proc))
            await asyncio.sleep(0.5)
        busy = sorted(samples)[1]
    per_task = (busy - idle) / STREAMS
    ctx.row("memory", f"processor RSS idle -> {STREAMS} streams in flight",
            f"{idle / 2**20:.1f} MiB -> {busy / 2**20:.1f} MiB")
    ctx.row("memory", "bytes per in-flight stream", f"{per_task / 1024:.1f} KiB",
            "<= 50 KiB", per_task <= 50 * 1024)
    return {"streams": STREAMS, "rss_idle": idle, "rss_busy": busy, "samples": samples,
            "bytes_per_task": round(per_task)}

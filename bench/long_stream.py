"""Scenario: long streams. 200 tasks at once, each watched live by one
``GET /api/tasks/{id}/events`` client, at two paces: a 500-token answer the mock streams at 50
tokens/s (100 reasoning + 400 content, about 10 s), and a 100-token answer at 10 tokens/s (20
reasoning + 80 content, about 10 s), a real reasoning model's pace, where every token tends to
be an event of its own. What a long answer costs per relayed token:

* CPU per 1,000 relayed tokens of the edge, the processor and redis-server together (the
  processes every token passes through), from submit to the last client's terminal event, and
  by process; the coordinator and the mock are shown apart (the coordinator's share is per
  task, not per token); and the delta events per token the clients received;
* memory per stream (at 50 tokens/s): the RSS of the edge, the processor and redis-server with
  every stream mid-answer, less their RSS idle after a warm-up, over the number of streams.

The processor runs with PROCESSOR_CONCURRENCY = GOVERNOR_INITIAL_WINDOW = 200, so all the
streams run at once from the start (sized for the provider, as the README advises); the
governor stays on, its cost is part of the figure.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import profile
from bench.common import BenchError, Ctx, loadgen, wait_rows
from bench.procs import CpuMeter, pid_of, pids, redis_server, rss_bytes, stack
from bench.relay import _sse

STREAMS, TTFT_MS = 200, 100


@dataclass(frozen=True)
class Pace:
    """A stream's shape: tokens per second and the answer's reasoning and content tokens."""

    rate: int
    reasoning: int
    content: int
    target_ms: float  # CPU per 1,000 relayed tokens, edge + processor + redis

    @property
    def tokens(self) -> int:
        return self.reasoning + self.content

    def mock(self) -> dict[str, str]:
        return {"MOCKAI_TTFT_MS": str(TTFT_MS), "MOCKAI_TOKENS_PER_S": str(self.rate),
                "MOCKAI_CONTENT_TOKENS": str(self.content),
                "MOCKAI_REASONING_TOKENS": str(self.reasoning)}


PACES = (Pace(50, 100, 400, 100.0), Pace(10, 20, 80, 150.0))
FAST = {"mock": {"ttft_ms": 0, "tokens_per_s": 0, "content_tokens": 40, "reasoning_tokens": 10}}
RELAY = ("edge", "processor", "redis")


class Watch:
    """The streams' progress, as the clients see it."""

    def __init__(self, midway_chars: int = 200) -> None:
        self.midway_chars = midway_chars
        self.deltas = 0
        self.midway = 0  # streams that got at least a tenth of their deltas' worth
        self.done = 0


async def one(http: aiohttp.ClientSession, edge: str, k: int, watch: Watch) -> int:
    """Submit a task and follow its events to the end; the number of delta events."""
    async with http.post(f"{edge}/api/tasks", json={"prompt": f"long stream {k}"}) as resp:
        if resp.status != 202:
            raise BenchError(f"submit answered {resp.status}: {await resp.text()}")
        task_id = (await resp.json())["id"]
    deltas, chars = 0, 0
    async with http.get(f"{edge}/api/tasks/{task_id}/events",
                        headers={"Accept": "text/event-stream"}) as resp:
        resp.raise_for_status()
        async for event, data in _sse(resp):
            if event in ("reasoning", "content"):
                deltas += 1
                watch.deltas += 1
                before, chars = chars, chars + len(orjson.loads(data)["delta"])
                if before < watch.midway_chars <= chars:
                    watch.midway += 1
            elif event == "done":
                watch.done += 1
                return deltas
            elif event in ("error", "cancelled"):
                raise BenchError(f"task {task_id} ended {event}: {data[:200]}")
    raise BenchError(f"task {task_id}: the event stream ended without a terminal event")


def _rss(groups: dict[str, list[int]]) -> dict[str, int]:
    return {name: sum(rss_bytes(p) for p in roots) for name, roots in groups.items()}


async def run(ctx: Ctx) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pace in PACES:
        out[f"{pace.rate}_tok_s"] = await one_pace(ctx, pace)
    if ctx.profile is not None:  # the slow pace once more, under py-spy: not counted
        for pace in PACES[1:]:
            spy = ctx.profile / f"long-{pace.rate}"
            spy.mkdir(parents=True, exist_ok=True)
            await one_pace(ctx, pace, spy=spy, tag="-profiled")
            out[f"{pace.rate}_tok_s"]["profile"] = profile.summarize_dir(spy)
    return out


async def one_pace(ctx: Ctx, pace: Pace, spy: Path | None = None,
                   tag: str = "") -> dict[str, Any]:
    d = ctx.dir(f"long-stream-{pace.rate}{tag}")
    env = {**pace.mock(), "PROCESSOR_CONCURRENCY": str(STREAMS),
           "GOVERNOR_INITIAL_WINDOW": str(STREAMS)}
    with redis_server(d) as r, stack(d, r.url, env=env) as s:
        groups = {"edge": pids(s, "edge"), "processor": pids(s, "processor"),
                  "redis": [pid_of(r)], "coordinator": pids(s, "coordinator"),
                  "mock": pids(s, "mockai")}
        await loadgen(s.edge_url + "/api/tasks", 100, metadata=FAST)
        await wait_rows(s.store_path, 100, 60, "long-stream warm-up")
        await asyncio.sleep(1.0)
        idle = _rss({k: groups[k] for k in RELAY})
        meter = CpuMeter(groups).start()
        watch = Watch(midway_chars=pace.tokens * 2 // 5)  # about a tenth of the tokens
        t0 = time.monotonic()
        connector = aiohttp.TCPConnector(limit=0)
        with profile.spying(spy, {m: pids(s, m)[0] for m in ("edge", "processor")}):
            async with aiohttp.ClientSession(connector=connector,
                                             timeout=aiohttp.ClientTimeout(total=120)) as http:
                clients = asyncio.gather(*(one(http, s.edge_url, k, watch)
                                           for k in range(STREAMS)))
                busy = await _rss_midway(watch, {k: groups[k] for k in RELAY}, clients)
                deltas = await clients
            cpu = meter.stop()
        wall = time.monotonic() - t0
    relayed = STREAMS * pace.tokens
    relay_ms = sum(cpu[k] for k in RELAY) * 1000
    per_1k = relay_ms / (relayed / 1000)
    per_stream = sum(busy[k] - idle[k] for k in RELAY) / STREAMS
    events_per_token = sum(deltas) / relayed
    by = {k: round(v * 1000 / (relayed / 1000), 1) for k, v in cpu.items()}
    parts = ", ".join(f"{k} {by[k]:.0f}" for k in RELAY)
    result = {"streams": STREAMS, "tokens_per_stream": pace.tokens, "rate": pace.rate,
              "wall_s": round(wall, 2), "delta_events": sum(deltas),
              "events_per_token": round(events_per_token, 3),
              "cpu_s": cpu, "cpu_ms_per_1k_tokens": round(per_1k, 1),
              "cpu_ms_per_1k_tokens_by_process": by, "rss_idle": idle, "rss_busy": busy,
              "bytes_per_stream": round(per_stream)}
    if spy is not None:
        return result
    ctx.row("long", f"CPU per 1,000 relayed tokens ({STREAMS} x {pace.tokens} tok at "
            f"{pace.rate}/s)", f"{per_1k:.0f} ms  [{parts}; coordinator {by['coordinator']:.0f},"
            f" mock {by['mock']:.0f}]", f"<= {pace.target_ms:.0f} ms", per_1k <= pace.target_ms)
    ctx.row("long", f"delta events per relayed token (at {pace.rate}/s)",
            f"{events_per_token:.2f}  ({sum(deltas):,} events, {relayed:,} tokens)")
    if pace.rate == PACES[0].rate:
        ctx.row("long", "memory per stream (edge + processor + redis RSS)",
                f"{per_stream / 1024:.1f} KiB  [" + ", ".join(
                    f"{k} {(busy[k] - idle[k]) / 1024 / STREAMS:.1f}" for k in RELAY) + "]",
                "<= 50 KiB", per_stream <= 50 * 1024)
    return result


async def _rss_midway(watch: Watch, groups: dict[str, list[int]],
                      clients: asyncio.Future[Any]) -> dict[str, int]:
    """RSS once every stream is well into its answer: the median of three looks."""
    deadline = time.monotonic() + 60
    while watch.midway < STREAMS:
        if clients.done():
            clients.result()  # raises what a client raised
            raise BenchError("long-stream: the streams ended before all were midway")
        if time.monotonic() > deadline:
            raise BenchError(f"long-stream: {watch.midway} of {STREAMS} streams midway "
                             "after 60 s")
        await asyncio.sleep(0.1)
    samples = []
    for _ in range(3):
        samples.append(_rss(groups))
        await asyncio.sleep(0.3)
    return {k: sorted(x[k] for x in samples)[1] for k in groups}

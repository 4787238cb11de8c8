"""Scenario "responses": what ``/v1/responses`` costs over ``/v1/chat/completions`` on the same
work, in one stack (so both meet the same machine at the same time).

* Added latency per token: the relay scenario's measure (``bench.relay``: each token's arrival
  at the client minus the time the mock was due to send it), for a ``stream: true`` response
  (``response.reasoning_text.delta`` / ``response.output_text.delta``) and a streamed chat
  completion, both minus the direct-from-the-mock latency.
* CPU per task: the CPU seconds of the edge, coordinator, processor and redis-server (not the
  mock's, not the client's) over N requests answered at once by the mock (``metadata.mock``:
  no first-token delay, no pacing), waited for (no ``stream``), at a fixed concurrency; the
  two endpoints alternate, several rounds, medians compared.

Target: within 10% of Chat Completions on both.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import aiohttp
import orjson

from bench import relay
from bench.common import Ctx
from bench.procs import CpuMeter, pid_of, pids, redis_server, stack
from bench.stats import summary

TARGET = 0.10  # within 10%
INSTANT = {"ttft_ms": 0, "tokens_per_s": 0, "content_tokens": 40, "reasoning_tokens": 10}


async def via_responses(http: aiohttp.ClientSession, edge: str, tag: str) -> list[relay.Delta]:
    body = {"model": "mock-r1", "stream": True, "metadata": {"mock": {"tag": tag}},
            "input": relay.PROMPT}
    out: list[relay.Delta] = []
    async with http.post(f"{edge}/v1/responses", json=body) as resp:
        if resp.status in (404, 405):
            raise relay.EndpointMissing("/v1/responses")
        resp.raise_for_status()
        async for _event, data in relay._sse(resp):
            now = time.time()
            event = orjson.loads(data)
            kind = event.get("type")
            if kind == "response.reasoning_text.delta":
                out.append((now, "reasoning", event["delta"]))
            elif kind == "response.output_text.delta":
                out.append((now, "content", event["delta"]))
            elif kind in ("response.completed", "response.incomplete", "response.failed"):
                break
    return out


def _chat(n: int) -> tuple[str, dict[str, Any]]:
    return "/v1/chat/completions", {
        "model": "mock-r1", "metadata": {"mock": INSTANT},
        "messages": [{"role": "user", "content": f"{relay.PROMPT} #{n}"}]}


def _responses(n: int) -> tuple[str, dict[str, Any]]:
    return "/v1/responses", {"model": "mock-r1", "metadata": {"mock": INSTANT},
                             "input": f"{relay.PROMPT} #{n}"}


async def _answer_all(http: aiohttp.ClientSession, edge: str, make: Any, n: int,
                      concurrency: int) -> None:
    """``n`` requests, ``concurrency`` at a time, each waited for to its answer."""
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            path, body = make(i)
            async with http.post(edge + path, json=body) as resp:
                if resp.status != 200:
                    raise AssertionError(f"{path}: {resp.status} {await resp.text()}")
                await resp.read()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def cpu_per_task(http: aiohttp.ClientSession, s: Any, meter_groups: dict[str, list[int]],
                       make: Any, n: int, concurrency: int) -> float:
    meter = CpuMeter(meter_groups).start()
    await _answer_all(http, s.edge_url, make, n, concurrency)
    used = meter.stop()
    return sum(used.values()) * 1000 / n


def _within(ours: float, base: float) -> bool:
    return ours <= base * (1 + TARGET)


async def run(ctx: Ctx) -> dict[str, Any]:
    streams, rounds = (4, 1) if ctx.quick else (10, 2)
    n, cpu_rounds, concurrency = (100, 1, 16) if ctx.quick else (300, 3, 16)
    d = ctx.dir("responses")
    out: dict[str, Any] = {"streams": streams, "rounds": rounds, "n": n,
                           "cpu_rounds": cpu_rounds, "concurrency": concurrency}
    with redis_server(d) as r, stack(d, r.url, env=relay.MOCK) as s:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            first = await relay.direct(http, s.mock_url, "responses-tokens")
            tokens = [(kind, text) for _t, kind, text in first]
            base = summary(await relay.measure(http, s.mock_url, relay.direct, s.mock_url,
                                               "direct", streams, rounds, tokens), 3)
            added: dict[str, float] = {}
            for name, how in (("chat", relay.via_openai), ("responses", via_responses)):
                st = summary(await relay.measure(http, s.mock_url, how, s.edge_url, name,
                                                 streams, rounds, tokens), 3)
                added[name] = st["p50"] - base["p50"]
                out[f"{name}_latency_ms"] = st
                out[f"{name}_added_p50_ms"] = round(added[name], 3)
            ctx.row("responses", "added latency per token p50: /v1/responses | chat "
                    "completions", f"{added['responses']:.2f} | {added['chat']:.2f} ms",
                    "within 10% (or 0.5 ms)",
                    added["responses"] <= max(added["chat"] * (1 + TARGET),
                                              added["chat"] + 0.5))
            groups = {"edge": pids(s, "edge"), "coordinator": pids(s, "coordinator"),
                      "processor": pids(s, "processor"), "redis": [pid_of(r)]}
            await _answer_all(http, s.edge_url, _chat, 50, concurrency)  # warm-up
            await _answer_all(http, s.edge_url, _responses, 50, concurrency)
            cpu: dict[str, list[float]] = {"chat": [], "responses": []}
            for _ in range(cpu_rounds):  # alternating, so both see the same machine
                for name, make in (("chat", _chat), ("responses", _responses)):
                    cpu[name].append(await cpu_per_task(http, s, groups, make, n, concurrency))
            med = {k: statistics.median(v) for k, v in cpu.items()}
            out["cpu_ms_per_task"] = {k: [round(x, 3) for x in v] for k, v in cpu.items()}
            out["cpu_ms_per_task_median"] = {k: round(v, 3) for k, v in med.items()}
            ratio = med["responses"] / med["chat"]
            out["cpu_ratio"] = round(ratio, 3)
            ctx.row("responses", f"CPU ms/task: /v1/responses | chat completions (N={n}, "
                    f"median of {cpu_rounds})",
                    f"{med['responses']:.2f} | {med['chat']:.2f} ms ({ratio:.2f}x)",
                    "<= 1.10x", _within(med["responses"], med["chat"]))
    return out

"""Extra scenario (``--only transport``, not in the default run): what one streamed provider
call costs the client, httpx as ``services/processor/provider.py`` uses it against aiohttp's
client, on the fast mock with 32 calls in flight. Measured in this process (its CPU time per
call), with the number of TCP connections each opened (TIME-WAIT sockets left at the mock's
port): a call that leaves its connection unusable pays a new connect (and, against a real
provider, a TLS handshake) on the next one."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import orjson

from bench.common import FAST_MOCK, Ctx, mock_only
from bench.procs import redis_server

CALLS, IN_FLIGHT = 1500, 32
BODY = orjson.dumps({"model": "mock-r1", "messages": [{"role": "user", "content": "hi"}],
                     "stream": True, "stream_options": {"include_usage": True}})
HEADERS = {"Content-Type": "application/json"}


def _time_wait(port: int) -> int:
    out = subprocess.run(["ss", "-tan"], capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if f":{port} " in line and "TIME-WAIT" in line)


async def _measure(one: Callable[[], Awaitable[None]]) -> dict[str, float]:
    for _ in range(50):
        await one()
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def gated() -> None:
        async with gate:
            await one()
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(gated() for _ in range(CALLS)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"calls_per_s": round(CALLS / wall), "cpu_ms_per_call": round(cpu * 1000 / CALLS, 3)}


async def _httpx(url: str, drain: bool) -> dict[str, float]:
    limits = httpx.Limits(max_connections=IN_FLIGHT + 16,
                          max_keepalive_connections=IN_FLIGHT + 16)
    async with httpx.AsyncClient(limits=limits) as client:
        async def one() -> None:
            async with client.stream("POST", url, content=BODY, headers=HEADERS) as resp:
                async for raw in resp.aiter_raw():
                    if b"[DONE]" in raw and not drain:
                        break  # what provider.py does once it has seen [DONE]
        return await _measure(one)


async def _aiohttp(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=IN_FLIGHT + 16)) as session:
        async def one() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as resp:
                async for raw in resp.content.iter_any():
                    if b"[DONE]" in raw:
                        break
        return await _measure(one)


async def run(ctx: Ctx) -> dict[str, Any]:
    d = ctx.dir("transport")
    out: dict[str, Any] = {}
    with redis_server(d) as r, mock_only(d, r.url, FAST_MOCK) as m:
        url = f"{m.mock_url}/v1/chat/completions"
        for name, make in (("httpx, leaving at [DONE] (provider.py)", lambda: _httpx(url, False)),
                           ("httpx, reading to the end", lambda: _httpx(url, True)),
                           ("aiohttp ClientSession", lambda: _aiohttp(url))):
            before = _time_wait(m.mock_port)
            x = await make()
            await asyncio.sleep(0.2)
            x["connections_opened"] = _time_wait(m.mock_port) - before
            out[name] = x
            ctx.row("transport", f"{name}: CPU/call | calls/s | new connections",
                    f"{x['cpu_ms_per_call']:.3f} ms | {x['calls_per_s']}/s | "
                    f"{x['connections_opened']} for {CALLS + 50} calls")
    return out

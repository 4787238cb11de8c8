"""Scenario 4: relay overhead. The mock streams at a fixed rate (50 tokens/s after a 100 ms
first-token delay); we time the arrival of every token at the client, read three ways:

* directly from the mock (``POST /v1/chat/completions`` on the mock, stream: true),
* through Sluice's task events (``POST /api/tasks`` then ``GET /api/tasks/{id}/events``),
* through Sluice's OpenAI-compatible endpoint (``POST /v1/chat/completions``, stream: true).

A token's latency is its arrival (wall clock) minus the time the mock was due to send it: the
mock records when each request arrived (``started_at``) and sends token i at
``started_at + ttft + i / rate``. The relay's overhead is the through-Sluice latency minus the
direct one (p50 against p50, p99 against p99). Deltas that carry several tokens are split by
the token texts, known from a direct stream of the same prompt (the mock is deterministic).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from bench.common import Ctx
from bench.procs import redis_server, stack
from bench.stats import summary

RATE, TTFT_MS, REASONING, CONTENT = 50, 100, 10, 40
MOCK = {"MOCKAI_TTFT_MS": str(TTFT_MS), "MOCKAI_TOKENS_PER_S": str(RATE),
        "MOCKAI_CONTENT_TOKENS": str(CONTENT), "MOCKAI_REASONING_TOKENS": str(REASONING)}
PROMPT = "relay benchmark: the same prompt gives the same tokens"
Delta = tuple[float, str, str]  # arrival (time.time()), kind ('reasoning' | 'content'), text


class EndpointMissing(Exception):
    pass


async def _sse(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """(event, data) pairs of an SSE body; event is 'message' when not named."""
    event, data = "message", list[str]()
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)


def _openai_deltas(data: str, now: float, out: list[Delta]) -> bool:
    """Append the deltas of one chat.completion.chunk; True at [DONE]."""
    if data.strip() == "[DONE]":
        return True
    chunk = orjson.loads(data)
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        r = delta.get("reasoning_content") or delta.get("reasoning")
        if r:
            out.append((now, "reasoning", r))
        if delta.get("content"):
            out.append((now, "content", delta["content"]))
    return False


async def _openai_stream(http: aiohttp.ClientSession, url: str, tag: str) -> list[Delta]:
    body = {"model": "mock-r1", "stream": True, "metadata": {"mock": {"tag": tag}},
            "messages": [{"role": "user", "content": PROMPT}]}
    out: list[Delta] = []
    async with http.post(url, json=body) as resp:
        if resp.status in (404, 405):
            raise EndpointMissing(url)
        resp.raise_for_status()
        async for _event, data in _sse(resp):
            if _openai_deltas(data, time.time(), out):
                break
    return out


async def direct(http: aiohttp.ClientSession, mock: str, tag: str) -> list[Delta]:
    return await _openai_stream(http, f"{mock}/v1/chat/completions", tag)


async def via_openai(http: aiohttp.ClientSession, edge: str, tag: str) -> list[Delta]:
    return await _openai_stream(http, f"{edge}/v1/chat/completions", tag)


async def via_events(http: aiohttp.ClientSession, edge: str, tag: str) -> list[Delta]:
    body = {"prompt": PROMPT, "metadata": {"mock": {"tag": tag}}}
    async with http.post(f"{edge}/api/tasks", json=body) as resp:
        task_id = (await resp.json())["id"]
    out: list[Delta] = []
    async with http.get(f"{edge}/api/tasks/{task_id}/events",
                        headers={"Accept": "text/event-stream"}) as resp:
        if resp.status in (404, 405):
            raise EndpointMissing("/api/tasks/{id}/events")
        resp.raise_for_status()
        async for event, data in _sse(resp):
            now = time.time()
            if event in ("reasoning", "content"):
                out.append((now, event, orjson.loads(data)["delta"]))
            elif event in ("done", "error", "cancelled"):
                break
    return out


def token_arrivals(deltas: list[Delta], tokens: list[tuple[str, str]]) -> list[float]:
    """Arrival time of each token: that of the delta that completed it."""
    got = {"reasoning": 0, "content": 0}
    ends: list[tuple[str, int]] = []  # per token: kind, cumulative length within its kind
    seen = {"reasoning": 0, "content": 0}
    for kind, text in tokens:
        seen[kind] += len(text)
        ends.append((kind, seen[kind]))
    arrivals: list[float] = []
    i = 0
    for t, kind, text in deltas:
        got[kind] += len(text)
        while i < len(ends) and got[ends[i][0]] >= ends[i][1]:
            arrivals.append(t)
            i += 1
    return arrivals


async def _mock_started(http: aiohttp.ClientSession, mock: str, tag: str) -> float:
    async with http.get(f"{mock}/mock/requests", params={"tag": tag}) as resp:
        records = (await resp.json())["requests"]
    return float(records[0]["started_at"])


async def measure(http: aiohttp.ClientSession, mock: str, how: Any, base: str, name: str,
                  streams: int, rounds: int, tokens: list[tuple[str, str]]) -> list[float]:
    """Latency (ms) of every token of ``streams`` concurrent streams, ``rounds`` times."""
    lat: list[float] = []
    for r in range(rounds):
        tags = [f"relay-{name}-{r}-{k}-{time.time_ns()}" for k in range(streams)]
        results = await asyncio.gather(*(how(http, base, tag) for tag in tags))
        for tag, deltas in zip(tags, results, strict=True):
            started = await _mock_started(http, mock, tag)
            arrivals = token_arrivals(deltas, tokens)
            if len(arrivals) != len(tokens):
                raise AssertionError(f"{name}: {len(arrivals)} of {len(tokens)} tokens arrived")
            for i, t in enumerate(arrivals):
                due = started + TTFT_MS / 1000 + i / RATE
                lat.append((t - due) * 1000)
    return lat


async def run(ctx: Ctx) -> dict[str, Any]:
    streams, rounds = (4, 1) if ctx.quick else (10, 2)
    d = ctx.dir("relay")
    out: dict[str, Any] = {"rate": RATE, "ttft_ms": TTFT_MS, "streams": streams,
                           "rounds": rounds}
    with redis_server(d) as r, stack(d, r.url, env=MOCK) as s:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            first = await direct(http, s.mock_url, "relay-tokens")
            tokens = [(kind, text) for _t, kind, text in first]
            base = await measure(http, s.mock_url, direct, s.mock_url, "direct", streams,
                                 rounds, tokens)
            out["direct_ms"] = summary(base, 3)
            ctx.row("relay", f"direct from the mock: token latency p50 / p99 ({RATE} tok/s)",
                    f"{out['direct_ms']['p50']:.2f} / {out['direct_ms']['p99']:.2f} ms")
            for name, how, label in (("events", via_events, "GET /api/tasks/{id}/events"),
                                     ("openai", via_openai, "/v1/chat/completions stream")):
                try:
                    lat = await measure(http, s.mock_url, how, s.edge_url, name, streams,
                                        rounds, tokens)
                except EndpointMissing:
                    out[name] = "n/a (endpoint missing)"
                    ctx.row("relay", f"{label}: added latency per token p50",
                            "n/a (endpoint missing)", "<= 2 ms", None)
                    continue
                st = summary(lat, 3)
                added_p50 = st["p50"] - out["direct_ms"]["p50"]
                added_p99 = st["p99"] - out["direct_ms"]["p99"]
                out[name] = {"latency_ms": st, "added_p50_ms": round(added_p50, 3),
                             "added_p99_ms": round(added_p99, 3)}
                ctx.row("relay", f"{label}: added latency per token p50",
                        f"{added_p50:.2f} ms (p99 +{added_p99:.2f} ms)", "<= 2 ms",
                        added_p50 <= 2)
    return out

"""What a peer queue's job does in the end-to-end comparison: the work of one Sluice task.

One streamed chat completion from the same mock provider, through one shared
``httpx.AsyncClient``, reasoning and content kept, and one row in a SQLite file with the very
schema of the Sluice store. What only Sluice does (live deltas in Redis for clients, leases,
fencing, batching) is left out, so the comparison favours the peers.

This module runs inside the peers' own virtualenvs (arq pins ``redis<6``): it imports only
httpx, orjson and the standard library, and nothing else of the repository.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[2]
_INSERT = (
    "INSERT INTO tasks (id, tenant, status, model, request, content, reasoning_content, "
    "finish_reason, prompt_tokens, completion_tokens, total_tokens, attempts, error, batch_id, "
    "processor, fence, created_at, started_at, completed_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def payload(i: int, nonce: str) -> dict[str, Any]:
    """The provider request of task ``i``: what the edge builds from {"prompt": ...}."""
    return {"model": "mock-r1",
            "messages": [{"role": "user", "content": f"bench task {nonce} {i}"}]}


def open_store(path: str) -> sqlite3.Connection:
    """The Sluice schema (migrations/*.sql) with the Sluice store's pragmas."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for f in sorted((ROOT / "migrations").glob("[0-9]*.sql")):
        lines = [ln for ln in f.read_text().splitlines() if not ln.strip().startswith("--")]
        for statement in "\n".join(lines).split(";"):
            if statement.strip():
                conn.execute(statement)
    return conn


class JobState:
    """Per worker process: one HTTP client, one SQLite connection."""

    def __init__(self, base_url: str, db_path: str, max_connections: int) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        limits = httpx.Limits(max_connections=max_connections,
                              max_keepalive_connections=max_connections)
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=10.0, read=120.0, write=30.0, pool=None),
            limits=limits, headers={"Accept": "text/event-stream, application/json"})
        self.db = open_store(db_path)
        self.name = f"peer-{os.getpid()}"

    @classmethod
    def from_env(cls) -> JobState:
        return cls(os.environ["BENCH_AI_BASE_URL"], os.environ["BENCH_DB"],
                   int(os.environ.get("BENCH_CONCURRENCY", "32")) + 16)

    async def aclose(self) -> None:
        await self.client.aclose()
        self.db.close()

    async def run(self, task_id: str, request: dict[str, Any], created_at: int) -> None:
        started = now_ms()
        body = {**request, "stream": True, "stream_options": {"include_usage": True}}
        content: list[str] = []
        reasoning: list[str] = []
        finish: str | None = None
        usage: dict[str, int] = {}
        async with self.client.stream("POST", self.url, content=orjson.dumps(body),
                                      headers={"Content-Type": "application/json"}) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = orjson.loads(data)
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        content.append(delta["content"])
                    if delta.get("reasoning_content"):
                        reasoning.append(delta["reasoning_content"])
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        self.db.execute(_INSERT, (
            task_id, "public", "succeeded", request["model"], orjson.dumps(request).decode(),
            "".join(content), "".join(reasoning), finish, usage.get("prompt_tokens"),
            usage.get("completion_tokens"), usage.get("total_tokens"), 1, None, None,
            self.name, 1, created_at, started, now_ms()))


async def produce(send: Callable[[int, str], Awaitable[None]], n: int, conns: int,
                  warmup: int = 0) -> dict[str, Any]:
    """Enqueue ``n`` jobs with ``conns`` in flight; the producer's rate and CPU time."""
    nonce = f"{time.time_ns():x}"

    async def phase(count: int, offset: int) -> None:
        todo = list(range(offset + count - 1, offset - 1, -1))

        async def worker() -> None:
            while todo:
                await send(todo.pop(), nonce)
        await asyncio.gather(*(worker() for _ in range(conns)))

    if warmup:
        await phase(warmup, n)
    cpu0, wall0, t_first = time.process_time(), time.perf_counter(), time.time()
    await phase(n, 0)
    elapsed = time.perf_counter() - wall0
    return {"n": n, "conns": conns, "elapsed_s": round(elapsed, 4), "rate": round(n / elapsed, 1),
            "cpu_s": round(time.process_time() - cpu0, 3), "t_first": t_first}


def uvloop_policy() -> None:
    """Both peers' workers on uvloop, as our services are (taskiq picks it by itself)."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def produce_args(argv: list[str]) -> tuple[int, int, int]:
    """``produce N [CONNS [WARMUP]]``"""
    n = int(argv[0])
    conns = int(argv[1]) if len(argv) > 1 else 50
    warmup = int(argv[2]) if len(argv) > 2 else 0
    return n, conns, warmup

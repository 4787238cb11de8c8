"""The edge as a process under load it must absorb: bursts beyond its Redis pool and its stream
readers (they wait, never 503), and gzip bombs sent without a key (refused, never inflated, and
/api/health keeps answering meanwhile)."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
import zlib
from pathlib import Path

import aiohttp
import pytest

from harness.processes import running_stack

pytestmark = pytest.mark.e2e

TERMINAL = {"done", "error", "cancelled"}
N = 600


async def last_event(http: aiohttp.ClientSession, base: str, task_id: str) -> str | None:
    """The type of the last event of the task's stream, read to its end."""
    async with http.get(f"{base}/api/tasks/{task_id}/events") as r:
        assert r.status == 200, (r.status, await r.text())
        last = None
        async for raw in r.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                last = line.partition(":")[2].strip()
        return last


def test_600_submits_and_600_watched_streams_get_no_503_and_every_stream_ends(
        tmp_path: Path, redis_url: str) -> None:
    """More simultaneous submits than the edge's Redis pool has connections (256), and more
    watched tasks than it has stream readers (32 here): all wait their turn."""
    env = {"EDGE_STREAM_READERS": "32", "PROCESSOR_CONCURRENCY": "300", "BATCH_SIZE": "25",
           "BATCH_TIMEOUT_MS": "50"}
    with running_stack(tmp_path, redis_url, env=env) as stack:
        base = stack.edge_url

        async def main() -> tuple[list[int], list[str | None]]:
            timeout = aiohttp.ClientTimeout(total=240)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                             timeout=timeout) as http:
                async def submit(i: int) -> tuple[int, str | None]:
                    # Each answer takes about half a second: the streams are live.
                    body = {"prompt": f"load {i} {uuid.uuid4().hex}", "metadata": {"mock": {
                        "tokens_per_s": 40, "content_tokens": 20, "reasoning_tokens": 0}}}
                    async with http.post(f"{base}/api/tasks", json=body) as r:
                        return r.status, (await r.json()).get("id")
                submitted = await asyncio.gather(*(submit(i) for i in range(N)))
                ids = [task_id for _status, task_id in submitted if task_id]
                ends = await asyncio.gather(*(last_event(http, base, t) for t in ids))
                return [status for status, _ in submitted], ends

        statuses, ends = asyncio.run(main())
        assert statuses.count(503) == 0 and set(statuses) == {202}, \
            {s: statuses.count(s) for s in set(statuses)}
        assert len(ends) == N
        unended = [e for e in ends if e not in TERMINAL]
        assert unended == [], f"{len(unended)} of {N} streams ended without a terminal event"
        [edge] = stack.of("edge")
        log = edge.log.read_text()
        assert "redis_pool_exhausted" not in log and "redis_unavailable" not in log


def gzip_bomb(inflated: int) -> bytes:
    out = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    return b"".join(out.compress(block) for _ in range(inflated >> 20)) + out.flush()


def test_gzip_bombs_without_a_key_are_refused_and_health_keeps_answering(
        tmp_path: Path, redis_url: str) -> None:
    data = gzip_bomb(1 << 30)  # 1 GiB of zeros in about 1 MB
    assert len(data) < 1_100_000
    key = "sk-bombs-" + uuid.uuid4().hex
    with running_stack(tmp_path, redis_url, env={"EDGE_API_KEYS": f"{key}:alpha"}) as stack:
        base = stack.edge_url

        async def main() -> tuple[list[int], list[float], list[int]]:
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                             timeout=timeout) as http:
                async def bomb(keyed: bool) -> int:
                    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip",
                               **({"Authorization": f"Bearer {key}"} if keyed else {})}
                    async with http.post(f"{base}/api/tasks", data=data,
                                         headers=headers) as r:
                        return r.status

                bombs = [asyncio.create_task(bomb(keyed=i == 3)) for i in range(4)]
                latencies: list[float] = []
                health: list[int] = []
                while not all(b.done() for b in bombs) or len(latencies) < 20:
                    started = time.perf_counter()
                    async with http.get(f"{base}/api/health") as r:
                        health.append(r.status)
                        await r.read()
                    latencies.append(time.perf_counter() - started)
                return list(await asyncio.gather(*bombs)), latencies, health

        statuses, latencies, health = asyncio.run(main())
        print(f"health during gzip bombs: {len(latencies)} probes, median "
              f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
        assert statuses == [401, 401, 401, 415]  # the keyed one is refused unread too
        assert set(health) == {200}
        [edge] = stack.of("edge")
        log = edge.log.read_text()
        assert "Traceback" not in log, log[-3000:]

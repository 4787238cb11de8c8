"""The load process: ``python -m bench.loadgen`` POSTs tasks to the edge over N connections.

It runs apart from the bench and from the services, so its own CPU is not charged to the edge
and the edge is measured as a client would see it. It prints one JSON object on stdout:
rate, latency percentiles, its own CPU time and the wall-clock times of the first and last
request (for end-to-end timing).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from bench import rawclient
from bench.stats import summary


async def _run(url: str, n: int, conns: int, warmup: int, metadata: Any,
               raw: bool) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=conns, force_close=False)
    headers = {"Content-Type": "application/json"}
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    nonce = f"{time.time_ns():x}"

    def body(i: int) -> bytes:
        b: dict[str, Any] = {"prompt": f"bench task {nonce} {i}"}
        if metadata is not None:
            b["metadata"] = metadata
        return orjson.dumps(b)

    async with aiohttp.ClientSession(connector=connector) as http:
        async def one(i: int, record: bool) -> None:
            t = time.perf_counter()
            async with http.post(url, data=body(i), headers=headers) as resp:
                await resp.read()
                if record:
                    latencies.append((time.perf_counter() - t) * 1000)
                    statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1

        async def worker(todo: list[int], record: bool) -> None:
            while todo:
                await one(todo.pop(), record)

        async def phase(count: int, offset: int, record: bool) -> None:
            if raw:
                bodies = [body(i) for i in range(offset, offset + count)]
                await rawclient.post_all(url, bodies, conns, latencies if record else None,
                                         statuses if record else {})
                return
            todo = list(range(offset + count - 1, offset - 1, -1))
            await asyncio.gather(*(worker(todo, record) for _ in range(conns)))

        if warmup:
            await phase(warmup, n, record=False)
        cpu0, wall0, t_first = time.process_time(), time.perf_counter(), time.time()
        await phase(n, 0, record=True)
        elapsed = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
    return {"n": n, "conns": conns, "statuses": statuses, "elapsed_s": round(elapsed, 4),
            "rate": round(n / elapsed, 1), "latency_ms": summary(latencies, 3),
            "cpu_s": round(cpu, 3), "t_first": t_first, "t_last": time.time()}


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed, as our services and the peers' workers use it."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--client", choices=("aiohttp", "raw"), default="aiohttp",
                    help="raw: bench.rawclient, for a figure of the server, not the client")
    ap.add_argument("--metadata", default=None, help="JSON object sent as the task's metadata")
    a = ap.parse_args()
    meta = orjson.loads(a.metadata) if a.metadata else None
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        out = runner.run(_run(a.url, a.n, a.conns, a.warmup, meta, a.client == "raw"))
    sys.stdout.write(orjson.dumps(out).decode() + "\n")


if __name__ == "__main__":
    main()

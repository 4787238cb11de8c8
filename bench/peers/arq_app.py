"""arq running the Sluice job: ``python -m bench.peers.arq_app worker | produce N [CONNS]``.

Run with the interpreter of ``.bench-venvs/arq`` (arq 0.28 pins redis<6). Settings are arq's
defaults except ``max_jobs``, set to the Sluice processor's concurrency.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import orjson
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import run_worker

from bench.peers.job import JobState, now_ms, payload, produce, produce_args, uvloop_policy

REDIS = RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"])


async def startup(ctx: dict[str, Any]) -> None:
    ctx["job"] = JobState.from_env()


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["job"].aclose()


async def complete(ctx: dict[str, Any], task_id: str, request: dict[str, Any],
                   created_at: int) -> None:
    await ctx["job"].run(task_id, request, created_at)


class WorkerSettings:
    functions = [complete]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = REDIS
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY", "32"))


async def _produce(n: int, conns: int, warmup: int) -> dict[str, Any]:
    pool = await create_pool(REDIS)

    async def send(i: int, nonce: str) -> None:
        await pool.enqueue_job("complete", f"arq-{nonce}-{i}", payload(i, nonce), now_ms())
    try:
        return await produce(send, n, conns, warmup)
    finally:
        await pool.aclose()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    uvloop_policy()
    if sys.argv[1] == "worker":
        run_worker(WorkerSettings)  # type: ignore[arg-type]
    else:
        out = asyncio.run(_produce(*produce_args(sys.argv[2:])))
        print(orjson.dumps(out).decode(), flush=True)


if __name__ == "__main__":
    main()

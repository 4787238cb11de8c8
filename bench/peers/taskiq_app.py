"""Taskiq running the Sluice job.

Worker: ``taskiq worker bench.peers.taskiq_app:broker --workers 1 ...`` (its CLI, which runs
the worker as a child process); producer: ``python -m bench.peers.taskiq_app produce N``.
Run with the interpreter of ``.bench-venvs/taskiq``. The producer calls ``broker.startup()``
before sending: it creates the stream's consumer group, without which jobs sent before the
worker starts are lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import orjson
from taskiq_redis import RedisStreamBroker

from bench.peers.job import JobState, now_ms, payload, produce, produce_args, uvloop_policy

broker = RedisStreamBroker(url=os.environ["BENCH_REDIS_URL"])
_state: list[JobState] = []  # created on the first job, in the worker process


@broker.task(task_name="complete")
async def complete(task_id: str, request: dict[str, Any], created_at: int) -> None:
    if not _state:
        _state.append(JobState.from_env())
    await _state[0].run(task_id, request, created_at)


async def _produce(n: int, conns: int, warmup: int) -> dict[str, Any]:
    await broker.startup()

    async def send(i: int, nonce: str) -> None:
        await complete.kiq(f"tq-{nonce}-{i}", payload(i, nonce), now_ms())
    try:
        return await produce(send, n, conns, warmup)
    finally:
        await broker.shutdown()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    uvloop_policy()
    out = asyncio.run(_produce(*produce_args(sys.argv[2:])))
    print(orjson.dumps(out).decode(), flush=True)


if __name__ == "__main__":
    main()

"""The dashboard's history: per-minute figures in Redis, kept 24 h, so every edge replica
draws the same charts. Each process adds to its own minute buckets in memory and flushes them
every few seconds in one pipeline (HINCRBY / HINCRBYFLOAT), so the hot paths never wait on it.

Fields: submitted, finished, failed, queue_wait_s / queue_wait_n, ttft_s / ttft_n,
rate_limited (429s), pauses (Retry-After waits), and depth (the queue's depth, sampled by the
edges)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable

from shared import logs, metrics
from shared.keys import Keys
from shared.redis_conn import UNAVAILABLE, RedisClient
from shared.timeutil import now_ms

log = logs.get("sluice.rollup")
KEEP_S = 24 * 3600 + 120
FLUSH_S = 2.0
_pending: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))


def minute(at_ms: int | None = None) -> int:
    return (now_ms() if at_ms is None else at_ms) // 60_000


def add(field: str, amount: float = 1.0) -> None:
    _pending[minute()][field] += amount


async def flush(redis: RedisClient, keys: Keys,
                sample: Callable[[], Awaitable[dict[str, float]]] | None = None) -> None:
    global _pending
    batch, _pending = _pending, defaultdict(lambda: defaultdict(float))
    sampled = await sample() if sample is not None else {}
    # An idle system writes nothing (a zero sample is what a missing one draws as).
    sampled = {k: v for k, v in sampled.items() if v}
    if not batch and not sampled:
        return
    try:
        async with redis.pipeline(transaction=False) as p:
            for m, fields in batch.items():
                for name, amount in fields.items():
                    if float(amount).is_integer():
                        p.hincrby(keys.rollup(m), name, int(amount))
                    else:
                        p.hincrbyfloat(keys.rollup(m), name, amount)
                p.expire(keys.rollup(m), KEEP_S)
            if sampled:
                for name, v in sampled.items():
                    p.hset(keys.rollup(minute()), name, v)
                p.expire(keys.rollup(minute()), KEEP_S)
            await p.execute()
    except UNAVAILABLE:
        metrics.redis_errors.labels("rollup").inc()
        for m, fields in batch.items():  # kept for the next flush
            for name, amount in fields.items():
                _pending[m][name] += amount


async def history(redis: RedisClient, keys: Keys, minutes: int = 60) -> list[dict[str, float]]:
    """The last ``minutes`` minutes, oldest first, each with its minute (epoch ms)."""
    last = minute()
    span = range(last - minutes + 1, last + 1)
    async with redis.pipeline(transaction=False) as p:
        for m in span:
            p.hgetall(keys.rollup(m))
        rows = await p.execute()
    return [{"t": m * 60_000, **{k: float(v) for k, v in row.items()}}
            for m, row in zip(span, rows, strict=True)]


@contextlib.asynccontextmanager
async def flushing(redis: RedisClient, keys: Keys,
                   sample: Callable[[], Awaitable[dict[str, float]]] | None = None
                   ) -> AsyncIterator[None]:
    """Flush every FLUSH_S while the block runs, and once more at its end."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await flush(redis, keys, sample)
            except Exception as exc:  # the history is a nicety: never stop a service for it
                log.warning("rollup_flush_failed", error=type(exc).__name__)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            await flush(redis, keys)

"""The dashboard's history: per-minute figures in Redis, kept 24 h, so every edge replica
draws the same charts. Each process adds to its own minute buckets in memory and flushes them
every few seconds in one pipeline (HINCRBY / HINCRBYFLOAT), so the hot paths never wait on it.

Fields, counted: submitted, finished, failed; calls and call_errors (provider calls that
answered, and failed), rate_limited (429s), pauses (Retry-After waits); tokens_in, tokens_out;
for each timing in TIMINGS (queue_wait, client_ttft, e2e: from submit; ttft: from the provider
call) ``<name>_s`` / ``<name>_n`` (sum, count) and ``h:<name>:<i>``, the count in bucket i of
BUCKETS, so percentiles can be read over any span of minutes; per tenant ``t:<tenant>:<what>``
and per model ``m:<model>:<what>`` (what: finished, failed, tokens, e2e_s, e2e_n; at most
METRICS_MAX_TENANTS tenants and MAX_MODELS models, the rest as ``other``). Sampled by the
edges: depth (tasks not yet running), window and gov_in_flight (the provider governors'
windows and calls in flight, summed over providers)."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from shared import logs, metrics
from shared.keys import Keys
from shared.redis_conn import UNAVAILABLE, RedisClient
from shared.timeutil import now_ms

log = logs.get("sluice.rollup")
KEEP_S = 24 * 3600 + 120
FLUSH_S = 2.0
_pending: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))


# Bucket upper bounds (seconds) of the timings' histograms: the last one catches the rest.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
           1800.0, 3600.0, float("inf"))
TIMINGS = ("queue_wait", "client_ttft", "ttft", "e2e")
# Tenants and models with a split of their own (the rest add up under 'other').
names = metrics.TenantLabels(True, 20)
models = metrics.TenantLabels(True, metrics.MAX_MODELS)


def configure(max_tenants: int) -> None:
    global names
    names = metrics.TenantLabels(True, max_tenants)
    _split_of.clear()


def minute(at_ms: int | None = None) -> int:
    return (now_ms() if at_ms is None else at_ms) // 60_000


def add(field: str, amount: float = 1.0) -> None:
    _pending[minute()][field] += amount


def bucket(seconds: float) -> int:
    """The index of the first bound ``seconds`` is within (bisect: a task observes four
    timings; a scan of the bounds per timing was ~1% of the processor's CPU)."""
    return min(bisect.bisect_left(BUCKETS, seconds), len(BUCKETS) - 1)


# Each timing's field names, spelt once: (sum, count, one per bucket).
_FIELDS = {name: (f"{name}_s", f"{name}_n", tuple(f"h:{name}:{i}" for i in range(len(BUCKETS))))
           for name in TIMINGS}


def observe(name: str, seconds: float, tenant: str = "", model: str = "") -> None:
    """One timing: its sum, count and bucket; e2e also by tenant and model."""
    row = _pending[minute()]
    total, count, buckets = _FIELDS[name]
    row[total] += seconds
    row[count] += 1
    row[buckets[bucket(seconds)]] += 1
    if name == "e2e":
        t, m = _splits(tenant, model)
        row[t.e2e_s] += seconds
        row[t.e2e_n] += 1
        row[m.e2e_s] += seconds
        row[m.e2e_n] += 1


def finished(status: str, tenant: str, model: str) -> None:
    row = _pending[minute()]
    failed = status == "failed"
    row["finished"] += 1
    if failed:
        row["failed"] += 1
    for split in _splits(tenant, model):
        row[split.finished] += 1
        if failed:
            row[split.failed] += 1


def tokens(prompt: int, completion: int, tenant: str, model: str) -> None:
    row = _pending[minute()]
    row["tokens_in"] += prompt
    row["tokens_out"] += completion
    for split in _splits(tenant, model):
        row[split.tokens] += prompt + completion


class _Split:
    """The field names of one tenant's (``t:<tenant>:``) or one model's (``m:<model>:``)
    split, spelt once."""

    __slots__ = ("e2e_n", "e2e_s", "failed", "finished", "tokens")

    def __init__(self, prefix: str) -> None:
        self.finished, self.failed, self.tokens = (
            f"{prefix}finished", f"{prefix}failed", f"{prefix}tokens")
        self.e2e_s, self.e2e_n = f"{prefix}e2e_s", f"{prefix}e2e_n"


# (tenant, model) as a task names them -> their splits. Kept while small: the labels are
# capped, the names a task gives are not (past the bound, each call works them out again).
_split_of: dict[tuple[str, str], tuple[_Split, _Split]] = {}
_SPLITS_KEPT = 4096


def _splits(tenant: str, model: str) -> tuple[_Split, _Split]:
    found = _split_of.get((tenant, model))
    if found is None:
        found = (_Split(f"t:{names(tenant)}:"), _Split(f"m:{models(model or '')}:"))
        if len(_split_of) < _SPLITS_KEPT:
            _split_of[(tenant, model)] = found
    return found


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
    """The last ``minutes`` minutes, oldest first, each with its minute (epoch ms, "t")."""
    last = minute()
    span = range(last - minutes + 1, last + 1)
    rows: list[Any] = []
    for start in range(0, minutes, 240):  # pipelines of a few hundred commands
        async with redis.pipeline(transaction=False) as p:
            for m in span[start:start + 240]:
                p.hgetall(keys.rollup(m))
            rows.extend(await p.execute())
    return [{"t": m * 60_000, **{k: float(v) for k, v in row.items()}}
            for m, row in zip(span, rows, strict=True)]


def percentile(rows: list[dict[str, float]], name: str, q: float) -> float | None:
    """The ``q`` quantile (0..1) of timing ``name`` over ``rows``, from their bucket counts,
    interpolated linearly inside the bucket (as Prometheus' histogram_quantile does; past the
    last finite bound: that bound). None when nothing was observed."""
    counts = [sum(r.get(f"h:{name}:{i}", 0.0) for r in rows) for i in range(len(BUCKETS))]
    total = sum(counts)
    if not total:
        return None
    rank, seen = q * total, 0.0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            lower = BUCKETS[i - 1] if i else 0.0
            upper = BUCKETS[i]
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
    return BUCKETS[-2]


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

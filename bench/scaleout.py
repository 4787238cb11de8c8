"""Scenario 5: scale-out. A provider-bound load on 1, 2 and 4 processor processes.

The mock answers after 200 ms and then streams 50 tokens at 500 tokens/s, so one task holds a
processor slot for T = 0.2 + 50/500 = 0.3 s however fast we are. With C = total concurrency
(processors x PROCESSOR_CONCURRENCY) and the queue never empty, the ideal is C / T tasks/s:
every slot busy with the provider all the time. We submit N = ROUNDS x C tasks at once and
measure N / (last completed_at - first submit); the ideal time is ROUNDS x T.

Why provider-bound: at 6 slots per processor (two default batches of 3) the heaviest case
(4 processors, C = 24) asks for 80 tasks/s, i.e. 4,000 streamed tokens/s across the mock, the
processors and Redis: under one of the 2 cores ("cores busy" next to each figure sums the CPU
of every process, mock included, over the run), so what is measured is how well we keep every
slot busy (claiming, batching, finishing), not CPU. Also shown: the mock's own time per
request and how long a task held its slot (started_at -> completed_at), both p50.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from bench.common import Ctx, fmt_rate, loadgen, query, wait_rows
from bench.procs import CpuMeter, pid_of, redis_server, stack
from bench.stats import summary

MOCK = {"MOCKAI_TTFT_MS": "200", "MOCKAI_TOKENS_PER_S": "500", "MOCKAI_CONTENT_TOKENS": "50",
        "MOCKAI_REASONING_TOKENS": "0"}
TASK_S = 0.2 + 50 / 500
PER_PROCESSOR = 6


def _mock_records(mock_url: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = httpx.get(f"{mock_url}/mock/requests", timeout=30).json()[
        "requests"]
    return records


async def one(ctx: Ctx, processors: int, rounds: int) -> dict[str, Any]:
    c = processors * PER_PROCESSOR
    n = rounds * c
    d = ctx.dir(f"scaleout-{processors}")
    env = {**MOCK, "PROCESSOR_CONCURRENCY": str(PER_PROCESSOR)}
    with redis_server(d) as r, stack(d, r.url, processors=processors, env=env) as s:
        url = s.edge_url + "/api/tasks"
        await loadgen(url, c)  # warm-up: one task per slot
        await wait_rows(s.store_path, c, 60, "scale-out warm-up")
        everything = [svc.proc.pid for svc in s.services] + [pid_of(r)]
        meter = CpuMeter({"all": everything}).start()
        lg = await loadgen(url, n)
        await wait_rows(s.store_path, c + n, 60 + n, f"scale-out x{processors}")
        cpu = meter.stop()["all"]
        last = query(s.store_path, "SELECT MAX(completed_at) FROM tasks")[0][0] / 1000
        held = query(s.store_path, "SELECT completed_at - started_at FROM tasks "
                     "ORDER BY created_at LIMIT -1 OFFSET ?", c)
        records = await asyncio.to_thread(_mock_records, s.mock_url)
    provider_ms = [1000 * (x["finished_at"] - x["started_at"]) for x in records[c:]
                   if x["finished_at"]]
    elapsed = last - lg["t_first"]
    rate, ideal = n / elapsed, c / TASK_S
    return {"processors": processors, "concurrency": c, "n": n, "elapsed_s": round(elapsed, 3),
            "tasks_per_s": round(rate, 1), "ideal_tasks_per_s": round(ideal, 1),
            "of_ideal": round(rate / ideal, 3), "cores_busy": round(cpu / elapsed, 2),
            # where a slot's time goes: the mock's own time per request, and the processor's
            # per task (started_at -> completed_at), both p50 in ms
            "provider_ms": summary(provider_ms, 1),
            "task_held_ms": summary([float(h[0]) for h in held], 1)}


async def run(ctx: Ctx) -> dict[str, Any]:
    rounds = 8 if ctx.quick else 15
    runs = []
    for p in (1, 2, 4):
        x = await one(ctx, p, rounds)
        runs.append(x)
        ctx.row("scaleout", f"{p} processor(s) x {PER_PROCESSOR} slots (C={x['concurrency']}, "
                f"N={x['n']})",
                f"{fmt_rate(x['tasks_per_s'])} of ideal {fmt_rate(x['ideal_tasks_per_s'])} = "
                f"{x['of_ideal']:.2f}  (cores busy {x['cores_busy']:.2f}; p50 ms/task: mock "
                f"{x['provider_ms']['p50']:.0f}, slot {x['task_held_ms']['p50']:.0f})",
                ">= 0.9 of ideal", x["of_ideal"] >= 0.9)
    return {"task_s": TASK_S, "per_processor": PER_PROCESSOR, "rounds": rounds, "runs": runs}

"""Scenario: what the Prometheus metrics cost end to end.

The e2e run (N tasks through edge, coordinator and processor, SQLite store), alternated with
the same run whose services have every metric update turned into a no-op (``metrics_off/``,
loaded through PYTHONPATH: the same code, less the metrics' own work). The median of three
rounds each; CPU per task is the figure that holds under a machine's noise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import e2e
from bench.common import Ctx, fmt_rate

OFF = {"PYTHONPATH": str(Path(__file__).with_name("metrics_off"))}


def _median(runs: list[dict[str, Any]], key: str) -> float:
    values = sorted(r[key] for r in runs)
    return float(values[len(values) // 2])


async def run(ctx: Ctx) -> dict[str, Any]:
    n = 600 if ctx.quick else 2000
    rounds = 1 if ctx.quick else 3
    on: list[dict[str, Any]] = []
    off: list[dict[str, Any]] = []
    for k in range(rounds):  # interleaved, so a change in the machine's load hits both
        on.append(await e2e.sluice(ctx, n, f"metrics-on-{k}"))
        off.append(await e2e.sluice(ctx, n, f"metrics-off-{k}", extra_env=OFF))
    cpu_on, cpu_off = _median(on, "cpu_ms_per_task"), _median(off, "cpu_ms_per_task")
    rate_on, rate_off = _median(on, "tasks_per_s"), _median(off, "tasks_per_s")
    s = "metrics"
    ctx.row(s, f"metrics on: tasks/s | CPU ms/task (N={n}, median of {rounds})",
            f"{fmt_rate(rate_on)} | {cpu_on:.2f} ms")
    ctx.row(s, "metrics off: tasks/s | CPU ms/task", f"{fmt_rate(rate_off)} | {cpu_off:.2f} ms")
    cost = cpu_on / cpu_off
    ctx.row(s, "CPU/task: metrics on / off", f"{cost:.3f}x", "<= 1.05x", cost <= 1.05)
    slow = rate_off / rate_on
    ctx.row(s, "tasks/s: metrics off / on", f"{slow:.3f}x", "<= 1.05x", slow <= 1.05)
    return {"n": n, "rounds": rounds, "on": on, "off": off, "cpu_ratio": round(cost, 4),
            "throughput_ratio": round(slow, 4)}

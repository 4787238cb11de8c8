"""``python -m bench.overrides watch,lane --pairs 3``: each override of redis-py
(REDIS_OVERRIDES, shared/redis_conn.py) on, then off, alternating, on Sluice's own figures
of ``python -m bench --only e2e`` (CPU ms per task, tasks/s; SQLite) and ``--only submit``
(submits/s, the edge's CPU ms per submit), without the peers. Prints each run as a JSON line
and a table of medians with their spread (min-max); writes them all to ``--out``."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.common import Ctx, loadgen
from bench.e2e import sluice
from bench.procs import CpuMeter, pid_of, pids, raise_fd_limit, redis_server, stack
from bench.submit import CONNS
from shared.config import REDIS_OVERRIDES


async def submit(ctx: Ctx, env: dict[str, str], tag: str, n: int) -> dict[str, float]:
    d = ctx.dir(f"submit-{tag}")
    with redis_server(d) as r, stack(d, r.url, processors=0, coordinators=0, env=env) as s:
        meter = CpuMeter({"edge": pids(s, "edge"), "redis": [pid_of(r)]})
        url = s.edge_url + "/api/tasks"
        await loadgen(url, 1000, CONNS)
        meter.start()
        out = await loadgen(url, n, CONNS, client="raw")
        cpu = meter.stop()
    return {"submit_per_s": round(out["rate"], 1),
            "edge_cpu_ms_per_submit": round(cpu["edge"] * 1000 / n, 4)}


async def one(ctx: Ctx, name: str, on: bool, k: int, n_e2e: int, n_submit: int
              ) -> dict[str, Any]:
    env = {"REDIS_OVERRIDES": "all" if on else f"-{name}"}
    tag = f"{name}-{'on' if on else 'off'}-{k}"
    e2e = await sluice(ctx, n_e2e, tag, extra_env=env)
    sub = await submit(ctx, env, tag, n_submit)
    return {"override": name, "on": on, "pair": k, "cpu_ms_per_task": e2e["cpu_ms_per_task"],
            "tasks_per_s": e2e["tasks_per_s"], "failed": e2e["failed"], **sub}


def _summary(runs: list[dict[str, Any]], field: str) -> str:
    xs = [r[field] for r in runs]
    return f"{statistics.median(xs):g} ({min(xs):g}-{max(xs):g})"


async def main_async(a: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    ctx = Ctx(tmp=tmp, quick=False)
    runs: list[dict[str, Any]] = []
    with a.out.open("a") as out:
        for name in a.names:
            for k in range(a.pairs):
                for on in (True, False):
                    run = await one(ctx, name, on, k, a.n_e2e, a.n_submit)
                    runs.append(run)
                    line = json.dumps(run)
                    print(line, flush=True)
                    out.write(line + "\n")
                    out.flush()
    fields = ("cpu_ms_per_task", "tasks_per_s", "submit_per_s", "edge_cpu_ms_per_submit")
    print("override  state  " + "  ".join(fields))
    for name in a.names:
        for on in (True, False):
            mine = [r for r in runs if r["override"] == name and r["on"] == on]
            print(f"{name}  {'on' if on else 'off'}  "
                  + "  ".join(_summary(mine, f) for f in fields))
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.overrides", description=__doc__)
    ap.add_argument("names", help=f"comma-separated, among {', '.join(REDIS_OVERRIDES)}")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--n-e2e", type=int, default=2000)
    ap.add_argument("--n-submit", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=Path("bench-overrides.jsonl"))
    a = ap.parse_args()
    a.names = [s.strip() for s in a.names.split(",") if s.strip()]
    unknown = sorted(set(a.names) - set(REDIS_OVERRIDES))
    if unknown:
        ap.error(f"unknown override(s): {', '.join(unknown)}")
    raise_fd_limit()
    tmp = Path(tempfile.mkdtemp(prefix="sluice-overrides-"))
    try:
        asyncio.run(main_async(a, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

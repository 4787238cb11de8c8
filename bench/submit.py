"""Scenario 1: submit. ``POST /api/tasks`` from a separate load process at 50 connections
against one edge process (redis-server behind it; no coordinator or processor, so only the
submit path works), next to the raw enqueue rate of arq (and Taskiq, for reference) from a
producer process with 50 enqueues in flight, each on a fresh redis-server."""

from __future__ import annotations

from typing import Any

from bench import profile
from bench.common import Ctx, fmt_rate, loadgen, run_json
from bench.e2e import peer_env
from bench.peers import venvs
from bench.procs import CpuMeter, pid_of, pids, redis_server, stack

CONNS = 50


async def peer_enqueue(ctx: Ctx, name: str, n: int, warmup: int) -> dict[str, Any]:
    py = str(venvs.ensure(name))
    d = ctx.dir(f"submit-{name}")
    with redis_server(d) as r:
        env = peer_env(r.url, "http://127.0.0.1:9", d / "unused.db")
        return await run_json([py, "-m", f"bench.peers.{name}_app", "produce", str(n),
                               str(CONNS), str(warmup)], env)


async def run(ctx: Ctx) -> dict[str, Any]:
    n, warmup = (1500, 300) if ctx.quick else (6000, 500)
    d = ctx.dir("submit-sluice")
    with redis_server(d) as r, stack(d, r.url, processors=0, coordinators=0) as s:
        meter = CpuMeter({"edge": pids(s, "edge"), "redis": [pid_of(r)]})
        url = s.edge_url + "/api/tasks"
        await loadgen(url, warmup, CONNS)  # connections, scripts loaded, code paths warm
        spy = ctx.profile / "submit" if ctx.profile else None
        if spy:
            spy.mkdir(parents=True, exist_ok=True)
        with profile.spying(spy, {"edge": pids(s, "edge")[0]}):
            meter.start()
            ours = await loadgen(url, n, CONNS)
            cpu = meter.stop()
    arq = await peer_enqueue(ctx, "arq", n, warmup)
    tq = await peer_enqueue(ctx, "taskiq", n, warmup)
    lat = ours["latency_ms"]
    sc = "submit"
    ctx.row(sc, f"POST /api/tasks, {CONNS} conns, 1 edge (N={n})", fmt_rate(ours["rate"]),
            f">= arq enqueue {fmt_rate(arq['rate'])}", ours["rate"] >= arq["rate"])
    ctx.row(sc, "submit latency p50 / p99", f"{lat['p50']:.2f} / {lat['p99']:.2f} ms",
            "p99 < 20 ms", lat["p99"] < 20)
    ctx.row(sc, "CPU ms/submit: edge | redis | load client",
            f"{cpu['edge'] * 1000 / n:.3f} | {cpu['redis'] * 1000 / n:.3f} | "
            f"{ours['cpu_s'] * 1000 / n:.3f}")
    ctx.row(sc, "arq | taskiq raw enqueue (in-process, 50 in flight)",
            f"{fmt_rate(arq['rate'])} | {fmt_rate(tq['rate'])}")
    return {"n": n, "conns": CONNS, "sluice": ours, "sluice_cpu_s": cpu,
            "arq_enqueue": arq, "taskiq_enqueue": tq}

"""Scenario 1: submit. ``POST /api/tasks`` from a separate load process at 50 connections
against one edge process (redis-server behind it; no coordinator or processor, so only the
submit path works), next to the raw enqueue rate of arq (and Taskiq, for reference) from a
producer process with 50 enqueues in flight, each on a fresh redis-server.

The load process is ``bench.rawclient`` (prepared requests on keep-alive connections, as
``wrk`` would send them): on two cores the load shares the edge's machine, and aiohttp's
client costs nearly what the edge does per request, so with it the figure is mostly the two
competing for the cores. Its figure is reported too, for comparison with earlier runs."""

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


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


async def run(ctx: Ctx) -> dict[str, Any]:
    n, warmup = (3000, 300) if ctx.quick else (20000, 1000)
    rounds = 1 if ctx.quick else 3
    d = ctx.dir("submit-sluice")
    runs: dict[str, list[dict[str, Any]]] = {"sluice": [], "aiohttp_client": [], "arq": [],
                                              "taskiq": []}
    with redis_server(d) as r, stack(d, r.url, processors=0, coordinators=0) as s:
        meter = CpuMeter({"edge": pids(s, "edge"), "redis": [pid_of(r)]})
        url = s.edge_url + "/api/tasks"
        await loadgen(url, warmup, CONNS)  # connections, scripts loaded, code paths warm
        spy = ctx.profile / "submit" if ctx.profile else None
        if spy:
            spy.mkdir(parents=True, exist_ok=True)
        for _ in range(rounds):  # interleaved with the peers: the machine's load hits all
            with profile.spying(spy, {"edge": pids(s, "edge")[0]}):
                meter.start()
                ours = await loadgen(url, n, CONNS, client="raw")
                ours["server_cpu_s"] = meter.stop()
            runs["sluice"].append(ours)
            spy = None  # one profile is enough
            meter.start()
            slow = await loadgen(url, n, CONNS)
            slow["server_cpu_s"] = meter.stop()
            runs["aiohttp_client"].append(slow)
            runs["arq"].append(await peer_enqueue(ctx, "arq", n, warmup))
            runs["taskiq"].append(await peer_enqueue(ctx, "taskiq", n, warmup))
    rate = {k: _median([x["rate"] for x in v]) for k, v in runs.items()}
    p99 = _median([x["latency_ms"]["p99"] for x in runs["sluice"]])
    p50 = _median([x["latency_ms"]["p50"] for x in runs["sluice"]])

    def per_submit(k: str, part: str) -> float:
        return _median([x["server_cpu_s"][part] * 1000 / n for x in runs[k]])

    arq_cpu = _median([x["cpu_s"] * 1000 / n for x in runs["arq"]])
    client_cpu = _median([x["cpu_s"] * 1000 / n for x in runs["sluice"]])
    ratio = rate["sluice"] / rate["arq"]
    sc, of = "submit", f"median of {rounds}"
    ctx.row(sc, f"POST /api/tasks, {CONNS} conns, 1 edge (N={n}, {of})", fmt_rate(rate["sluice"]),
            f"arq enqueue {fmt_rate(rate['arq'])}")
    ctx.row(sc, "submit: ours / arq's raw enqueue", f"{ratio:.2f}x", ">= 1.2x", ratio >= 1.2)
    ctx.row(sc, "submit latency p50 / p99", f"{p50:.2f} / {p99:.2f} ms", "p99 < 20 ms", p99 < 20)
    ctx.row(sc, "CPU ms/submit: edge | redis | load client (lean)",
            f"{per_submit('sluice', 'edge'):.3f} | {per_submit('sluice', 'redis'):.3f} | "
            f"{client_cpu:.3f}")
    ctx.row(sc, "CPU ms/enqueue: arq's producer", f"{arq_cpu:.3f}")
    ctx.row(sc, "POST /api/tasks with aiohttp's client as the load (its CPU shares the cores)",
            f"{fmt_rate(rate['aiohttp_client'])} (edge {per_submit('aiohttp_client', 'edge'):.3f}"
            " ms/submit)")
    ctx.row(sc, "arq | taskiq raw enqueue (in-process, 50 in flight)",
            f"{fmt_rate(rate['arq'])} | {fmt_rate(rate['taskiq'])}")
    return {"n": n, "conns": CONNS, "rounds": rounds, "ratio_to_arq": round(ratio, 3),
            "median_rate": rate, "runs": runs}

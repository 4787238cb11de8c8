"""Scenario 2: end to end, the same work as a peer.

N tasks, each one streamed completion from the fast mock persisted to SQLite, through one
edge, one coordinator and one processor; then the same N jobs through arq and through Taskiq
(one worker process each, same concurrency, same mock, same row), each on a fresh
redis-server. Throughput is N over (last row's completed_at - first submit). CPU per task sums
every process that does the work: the client that submits (our HTTP load process, or the
peer's producer), our services or the peer's worker, and redis-server; the mock provider's CPU
is shown apart, as it is the same work for everyone.

Sluice runs twice each round: on its SQLite store, and on PostgreSQL (a server of its own on
this machine, started from Debian's binaries; its CPU counts as the store's). PostgreSQL runs
with ``synchronous_commit = off``, the durability SQLite's WAL with ``synchronous = NORMAL``
has: a process crash loses nothing committed, an OS crash may lose the last moment.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import profile
from bench.common import (
    FAST_MOCK,
    BenchError,
    Ctx,
    fmt_rate,
    loadgen,
    mock_only,
    query,
    run_json,
    wait_rows,
)
from bench.peers import venvs
from bench.procs import (
    ROOT,
    CpuMeter,
    Proc,
    calls_between,
    pid_of,
    pids,
    redis_calls,
    redis_server,
    stack,
)
from harness.postgres import PostgresServer

CONCURRENCY = 32  # PROCESSOR_CONCURRENCY's default; arq's max_jobs and Taskiq's too
WARMUP = 100


def _finish(name: str, n: int, t_first: float, db: Path | str, cpu: dict[str, float],
            client_cpu: float, client: dict[str, Any], calls: dict[str, float]
            ) -> dict[str, Any]:
    last = query(db, "SELECT MAX(completed_at) FROM tasks")[0][0] / 1000
    failed = query(db, "SELECT COUNT(*) FROM tasks WHERE status != 'succeeded'")[0][0]
    elapsed = last - t_first
    per_task = {k: round(v * 1000 / n, 3) for k, v in cpu.items()}
    per_task["client"] = round(client_cpu * 1000 / n, 3)
    total = sum(v for k, v in per_task.items() if k != "mock")
    return {"system": name, "n": n, "elapsed_s": round(elapsed, 3),
            "tasks_per_s": round(n / elapsed, 1), "cpu_ms_per_task": round(total, 3),
            "cpu_ms_per_task_by_process": per_task, "failed": failed,
            "submit_rate": client["rate"], "redis_calls_per_task": calls}


@contextlib.contextmanager
def store_server(store: str) -> Iterator[tuple[str, list[int]]]:
    """STORE_URL for a run on ``store``, and the pids of its server (none for SQLite)."""
    if store == "sqlite":
        yield "", []
        return
    # Its own temporary directory, not under ``d``: the postgres user must be able to reach it.
    server = PostgresServer(settings={"synchronous_commit": "off"}).init().start()
    try:
        yield server.new_database(), [server.pid] if server.pid else []
    finally:
        server.remove()


async def sluice(ctx: Ctx, n: int, tag: str, spy: Path | None = None,
                 store: str = "sqlite", extra_env: dict[str, str] | None = None
                 ) -> dict[str, Any]:
    d = ctx.dir(f"e2e-sluice-{store}-{tag}")
    env = {**FAST_MOCK, "PROCESSOR_CONCURRENCY": str(CONCURRENCY), **(extra_env or {})}
    with redis_server(d) as r, store_server(store) as (url, store_pids), \
            stack(d, r.url, env=env, store_url=url) as s:
        url = s.edge_url + "/api/tasks"
        await loadgen(url, WARMUP)
        await wait_rows(s.store_path, WARMUP, 60, "sluice warm-up")
        meter = CpuMeter({"edge": pids(s, "edge"), "coordinator": pids(s, "coordinator"),
                          "processor": pids(s, "processor"), "redis": [pid_of(r)],
                          "mock": pids(s, "mockai"),
                          **({"postgres": store_pids} if store_pids else {})})
        with profile.spying(spy, {m: pids(s, m)[0] for m in ("edge", "coordinator",
                                                             "processor")}):
            meter.start()
            calls = redis_calls(r.url)
            lg = await loadgen(url, n)
            await wait_rows(s.store_path, WARMUP + n, 60 + n / 20, "sluice end to end")
            cpu = meter.stop()
        per = calls_between(calls, redis_calls(r.url), n)
        name = "sluice" if store == "sqlite" else f"sluice-{store}"
        return _finish(name, n, lg["t_first"], s.store_path, cpu, lg["cpu_s"], lg, per)


def peer_env(redis_url: str, mock_url: str, db: Path) -> dict[str, str]:
    return {**os.environ, "BENCH_REDIS_URL": redis_url, "BENCH_AI_BASE_URL": mock_url + "/v1",
            "BENCH_DB": str(db), "BENCH_CONCURRENCY": str(CONCURRENCY), "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1"}


def worker_args(peer: str) -> list[str]:
    if peer == "arq":
        return [str(venvs.python("arq")), "-m", "bench.peers.arq_app", "worker"]
    return [str(venvs.taskiq_cli()), "worker", "bench.peers.taskiq_app:broker", "--workers", "1",
            "--max-async-tasks", str(CONCURRENCY), "--log-level", "WARNING"]


async def peer(ctx: Ctx, name: str, n: int, tag: str) -> dict[str, Any]:
    py = str(venvs.ensure(name))
    d = ctx.dir(f"e2e-{name}-{tag}")
    db = d / "peer.db"
    with redis_server(d) as r, mock_only(d, r.url, FAST_MOCK) as m:
        env = peer_env(r.url, m.mock_url, db)
        produce = [py, "-m", f"bench.peers.{name}_app", "produce"]
        worker = Proc.start(name, worker_args(name), d / f"{name}-worker.log", env)
        try:
            await run_json([*produce, str(WARMUP)], env)
            await wait_rows(db, WARMUP, 60, f"{name} warm-up")
            meter = CpuMeter({"worker": [worker.pid], "redis": [pid_of(r)],
                              "mock": pids(m, "mockai")}).start()
            calls = redis_calls(r.url)
            out = await run_json([*produce, str(n)], env)
            await wait_rows(db, WARMUP + n, 60 + n / 20, f"{name} end to end")
            cpu = meter.stop()
            per = calls_between(calls, redis_calls(r.url), n)
        except BenchError:
            print(worker.tail(), flush=True)
            raise
        finally:
            worker.stop()
    return _finish(name, n, out["t_first"], db, cpu, out["cpu_s"], out, per)


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def _typical(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A system's figures over the rounds, each the median of its own (not one round's)."""
    by_process = {k: _median([r["cpu_ms_per_task_by_process"][k] for r in runs])
                  for k in runs[0]["cpu_ms_per_task_by_process"]}
    return {"system": runs[0]["system"], "n": runs[0]["n"],
            "tasks_per_s": _median([r["tasks_per_s"] for r in runs]),
            "cpu_ms_per_task": _median([r["cpu_ms_per_task"] for r in runs]),
            "cpu_ms_per_task_by_process": by_process,
            "failed": sum(r["failed"] for r in runs),
            "redis_calls_per_task": runs[len(runs) // 2]["redis_calls_per_task"]}


def ratios(systems: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Ours against the peers, round by round (a round runs everyone back to back, so its
    ratios share the machine's load), then the median over the rounds: tasks/s over the
    faster peer's of that round, and the leaner peer's CPU per task over ours."""
    speed, cpu = [], []
    for k, ours in enumerate(systems["sluice"]):
        peers = [systems["arq"][k], systems["taskiq"][k]]
        speed.append(ours["tasks_per_s"] / max(p["tasks_per_s"] for p in peers))
        cpu.append(min(p["cpu_ms_per_task"] for p in peers) / ours["cpu_ms_per_task"])
    return {"throughput_ratio": _median(speed), "cpu_ratio": _median(cpu),
            "throughput_ratios": [round(x, 3) for x in speed],
            "cpu_ratios": [round(x, 3) for x in cpu]}


def _each(xs: list[float]) -> str:
    return "" if len(xs) < 2 else f"  (rounds: {', '.join(f'{v:.2f}' for v in xs)})"


async def run(ctx: Ctx) -> dict[str, Any]:
    n = 600 if ctx.quick else 2000
    rounds = 1 if ctx.quick else 3
    systems: dict[str, list[dict[str, Any]]] = {"sluice": [], "sluice-postgresql": [],
                                                "arq": [], "taskiq": []}
    for k in range(rounds):  # interleaved, so a change in the machine's load hits all
        systems["sluice"].append(await sluice(ctx, n, str(k)))
        systems["sluice-postgresql"].append(await sluice(ctx, n, str(k), store="postgresql"))
        for name in ("arq", "taskiq"):
            systems[name].append(await peer(ctx, name, n, str(k)))
    typical = {name: _typical(runs) for name, runs in systems.items()}
    ours, pg, arq, tq = (typical["sluice"], typical["sluice-postgresql"], typical["arq"],
                         typical["taskiq"])
    faster = max(arq, tq, key=lambda x: x["tasks_per_s"])
    leaner = min(arq, tq, key=lambda x: x["cpu_ms_per_task"])
    r = ratios(systems)
    s = "e2e"
    for x in (ours, pg, arq, tq):
        by = x["cpu_ms_per_task_by_process"]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in by.items())
        ctx.row(s, f"{x['system']}: tasks/s | CPU ms/task (N={n}, median of {rounds})",
                f"{fmt_rate(x['tasks_per_s'])} | {x['cpu_ms_per_task']:.2f} ms  [{parts}]"
                + (f"  FAILED {x['failed']}" if x["failed"] else ""))
    ctx.row(s, f"tasks/s: ours / the faster peer's ({faster['system']} by median)",
            f"{r['throughput_ratio']:.2f}x" + _each(r["throughput_ratios"]), ">= 1.5x",
            r["throughput_ratio"] >= 1.5)
    ctx.row(s, f"CPU/task: the leaner peer's ({leaner['system']} by median) / ours",
            f"{r['cpu_ratio']:.2f}x" + _each(r["cpu_ratios"]), ">= 1.5x",
            r["cpu_ratio"] >= 1.5)
    pg_ratio = pg["tasks_per_s"] / ours["tasks_per_s"]
    ctx.row(s, "tasks/s: on PostgreSQL / on SQLite", f"{pg_ratio:.2f}x", ">= 0.8x",
            pg_ratio >= 0.8)
    result = {"n": n, "postgresql_ratio": round(pg_ratio, 3), "rounds": rounds,
              "concurrency": CONCURRENCY, "runs": systems, "median": typical,
              "throughput_ratio": round(r["throughput_ratio"], 3),
              "cpu_ratio": round(r["cpu_ratio"], 3),
              "throughput_ratios": r["throughput_ratios"], "cpu_ratios": r["cpu_ratios"]}
    if ctx.profile is not None:
        result["profile"] = await profile_run(ctx, n)
    return result


async def profile_run(ctx: Ctx, n: int) -> dict[str, Any]:
    """One more Sluice run under py-spy (not counted: sampling slows the processes)."""
    assert ctx.profile is not None
    out = ctx.profile
    out.mkdir(parents=True, exist_ok=True)
    await sluice(ctx, n, "profiled", spy=out)
    return profile.summarize_dir(out)

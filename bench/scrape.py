"""``python -m bench.scrape``: what one /metrics scrape costs with 1,000 tasks in flight.

Starts redis-server and the services (one processor with room for every task), submits the
tasks with a provider that takes minutes to its first token (so they stay in flight and the
machine is otherwise quiet), then scrapes each service's /metrics many times. A scrape's CPU is
the CPU the service (and redis-server, for the edge's queue figures) used while scraped, less
what it used over as long a quiet spell; its size is the response body."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.procs import (
    BENCH_ENV,
    CpuMeter,
    Stack,
    free_port,
    pid_of,
    raise_fd_limit,
    redis_server,
    wait_for,
)

ADMIN = "sk-bench-admin"


def measure(url: str, pids: dict[str, list[int]], scrapes: int,
            headers: dict[str, str]) -> dict[str, Any]:
    with httpx.Client(headers=headers, timeout=30) as http:
        http.get(url).raise_for_status()  # warm
        quiet = CpuMeter(pids).start()
        started = time.perf_counter()
        time.sleep(0.5)
        idle = quiet.stop()
        idle_s = time.perf_counter() - started
        meter = CpuMeter(pids).start()
        started = time.perf_counter()
        size = 0
        for _ in range(scrapes):
            r = http.get(url)
            r.raise_for_status()
            size = len(r.content)
        wall = time.perf_counter() - started
        used = meter.stop()
    cpu = {k: round(max(0.0, used[k] - idle[k] * wall / idle_s) / scrapes * 1000, 3)
           for k in used}
    return {"bytes": size, "series": sum(1 for line in r.text.splitlines()
                                         if line and not line.startswith("#")),
            "wall_ms": round(wall / scrapes * 1000, 2), "cpu_ms": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    raise_fd_limit()
    with tempfile.TemporaryDirectory() as tmp_dir, redis_server(Path(tmp_dir)) as server:
        tmp = Path(tmp_dir)
        env = {**BENCH_ENV, "PROCESSOR_CONCURRENCY": str(args.tasks), "BATCH_SIZE": "100",
               "BATCH_TIMEOUT_MS": "50", "EDGE_ADMIN_KEYS": ADMIN, "LOCK_TTL_MS": "60000"}
        s = Stack(tmp, server.url, env)
        ports = {"coordinator": free_port(), "processor": free_port()}
        try:
            s.start("mockai")
            wait_for(lambda: httpx.get(f"{s.mock_url}/health").status_code == 200, 20, "mock")
            s.start("edge")
            wait_for(lambda: httpx.get(f"{s.edge_url}/api/health").status_code == 200, 20,
                     "edge")
            s.start("coordinator", METRICS_PORT=str(ports["coordinator"]))
            s.start("processor", METRICS_PORT=str(ports["processor"]))
            s.wait_alive(1, 1)
            body = {"prompt": "wait", "metadata": {"mock": {"ttft_ms": 600_000}}}
            with httpx.Client(base_url=s.edge_url, timeout=30) as http:
                for _ in range(args.tasks):
                    http.post("/api/tasks", json=body).raise_for_status()

                def in_flight() -> bool:
                    status = http.get("/api/async-status").json()
                    return bool(status["processors"]["tasks_in_flight"] >= args.tasks)
                wait_for(in_flight, 120, f"{args.tasks} tasks in flight", interval=0.5)
            redis_pid = pid_of(server)
            results = {}
            for service, url in (
                    ("edge", f"{s.edge_url}/metrics"),
                    ("coordinator", f"http://127.0.0.1:{ports['coordinator']}/metrics"),
                    ("processor", f"http://127.0.0.1:{ports['processor']}/metrics")):
                pid = next(svc.proc.pid for svc in s.services if svc.name.startswith(service))
                results[service] = measure(url, {service: [pid], "redis": [redis_pid]},
                                           args.scrapes, {"Authorization": f"Bearer {ADMIN}"})
            print(json.dumps({"tasks_in_flight": args.tasks, "scrapes": args.scrapes,
                              "per_scrape": results}, indent=2))
        finally:
            s.down()


if __name__ == "__main__":
    main()

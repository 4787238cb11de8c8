"""``python -m bench``: start redis-server, the services and the mock provider, run each
scenario, print one table and write every figure to ``bench-results.json``.

    python -m bench                      # everything (under 10 minutes on 2 cores)
    python -m bench --quick              # smaller N, one round: a smoke run
    python -m bench --only e2e,submit    # some scenarios
    python -m bench --only e2e --profile /tmp/prof   # + py-spy on our services
    python -m bench --only transport     # extra: httpx vs aiohttp per provider call

The peers (arq, Taskiq) get their own virtualenvs in .bench-venvs/, made on first run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench import report
from bench.common import Ctx
from bench.procs import ROOT, machine, raise_fd_limit

SCENARIOS = ("submit", "e2e", "metrics_cost", "idle", "relay", "responses", "long_stream",
             "scaleout", "memory", "batching", "provider_limited", "provider_limited_two",
             "long_burst", "steady")
EXTRA = ("transport", "waiting_cpu")  # diagnostics, run only when named in --only


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SCENARIOS),
                    help=f"comma-separated scenarios among {', '.join(SCENARIOS + EXTRA)}")
    ap.add_argument("--quick", action="store_true", help="smaller N, one round")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results.json")
    ap.add_argument("--profile", type=Path, default=None,
                    help="also profile our services with py-spy (e2e, steady, long_stream, "
                         "long_burst); "
                         "stacks go here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    a = ap.parse_args()
    a.only = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = sorted(set(a.only) - set(SCENARIOS + EXTRA))
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(unknown)}")
    return a


async def run_all(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    ctx = Ctx(tmp=tmp, quick=a.quick, profile=a.profile)
    started = time.monotonic()
    doc: dict[str, Any] = {"machine_before": machine(), "quick": a.quick,
                           "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    timings: dict[str, float] = {}
    load, cores = doc["machine_before"]["loadavg"][0], doc["machine_before"]["cores"]
    if load > 0.5 * cores:
        ctx.notes.append(f"the machine was busy before the run (load {load} on {cores} cores): "
                         "rates and latencies are lower than on an idle machine; CPU per task "
                         "and same-run ratios hold better")
    for name in (s for s in SCENARIOS + EXTRA if s in a.only):
        t = time.monotonic()
        print(f"bench: {name} ...", flush=True)
        module = importlib.import_module(f"bench.{name}")
        try:
            ctx.results[name] = await module.run(ctx)
        except Exception as exc:  # one broken scenario must not hide the others' figures
            traceback.print_exc()
            ctx.results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            ctx.row(name, "error", f"{type(exc).__name__}: {str(exc)[:70]}", "", False)
        timings[name] = round(time.monotonic() - t, 1)
        print(f"bench: {name} done in {timings[name]} s", flush=True)
    doc.update({"machine_after": machine(), "duration_s": round(time.monotonic() - started, 1),
                "scenario_seconds": timings, "results": ctx.results, "notes": ctx.notes,
                "table": [r.__dict__ for r in ctx.rows]})
    m = doc["machine_before"]
    print()
    print(f"Sluice benchmarks: {m['cores']} cores, load {m['loadavg']} before, "
          f"{doc['machine_after']['loadavg']} after; Python {m['python']}, "
          f"redis-server {m['redis']}; {doc['duration_s']} s"
          + (" (quick)" if a.quick else ""))
    print(report.table(ctx.rows))
    for note in ctx.notes:
        print(f"  * {note}")
    return doc


def main() -> None:
    a = parse_args()
    raise_fd_limit()
    tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    try:
        doc = asyncio.run(run_all(a, tmp))
    finally:
        if a.keep:
            print(f"bench: logs in {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report.write_json(a.out, doc)
    print(f"\nresults: {a.out}")


if __name__ == "__main__":
    main()

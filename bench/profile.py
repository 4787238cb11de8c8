"""py-spy attached to our services during a run (``python -m bench --profile DIR``).

Raw (collapsed) stacks go to DIR/<service>.txt (any flame-graph tool reads them); the
summary is the functions with the most samples on top of the stack (self) and anywhere in it
(inclusive), idle waiting in the event loop left out. py-spy lives in .bench-venvs/tools.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.procs import ROOT

TOOLS = ROOT / ".bench-venvs" / "tools"
REPO_ROOT = f"{ROOT}/"  # frames of our own code are named relative to the checkout
# Frames that mean "waiting, not working": the loop's poll, a thread parked on a lock.
IDLE = ("select (selectors.py", "_run_once (asyncio", "run_forever (uvloop", "poll (",
        "wait (threading.py", "_worker (concurrent", "get (queue.py", "epoll")

# Frames on every stack (process start-up, the event loop's entry): no information.
ROOTS = ("<frozen runpy>", "services/edge/__main__.py", "services/coordinator/__main__.py",
         "services/processor/__main__.py", "asyncio/runners.py", "aiohttp/web.py:run_app")


def py_spy() -> str:
    found = shutil.which("py-spy") or (str(TOOLS / "bin" / "py-spy")
                                       if (TOOLS / "bin" / "py-spy").exists() else None)
    if found:
        return found
    subprocess.run([sys.executable, "-m", "venv", str(TOOLS)], check=True)
    subprocess.run([str(TOOLS / "bin" / "pip"), "install", "-q", "py-spy"], check=True)
    return str(TOOLS / "bin" / "py-spy")


@contextlib.contextmanager
def spying(out: Path | None, targets: dict[str, int], rate: int = 250) -> Iterator[None]:
    """Record each target pid while the block runs; nothing when ``out`` is None."""
    if out is None:
        yield
        return
    exe = py_spy()
    procs = []
    for name, pid in targets.items():
        procs.append(subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "-o", str(out / f"{name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        yield
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGINT)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def _frame(f: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:line)"; keep file:function, drop the line
    name, _, where = f.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", REPO_ROOT, "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{name}"


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = busy = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        leaf = frames[-1]
        if any(m in leaf for m in IDLE):
            continue
        busy += n
        own[_frame(leaf)] += n
        for f in {_frame(f) for f in frames}:
            if not f.startswith(ROOTS):
                incl[f] += n
    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / max(busy, 1), 1)) for k, v in c.most_common(top)]
    return {"samples": total, "busy_samples": busy, "self_pct_of_busy": share(own),
            "inclusive_pct_of_busy": share(incl)}


def summarize_dir(out: Path) -> dict[str, Any]:
    summary = {p.stem: summarize(p) for p in sorted(out.glob("*.txt"))}
    for name, s in summary.items():
        print(f"profile {name}: {s['busy_samples']} busy samples; top inclusive:")
        for frame, share in s["inclusive_pct_of_busy"][:10]:
            print(f"  {share:5.1f}%  {frame}")
    return summary

"""Processes for the benchmarks and what the kernel says about them.

The Sluice stack and redis-server are started exactly as the end-to-end tests start them
(``harness.processes``, which both import): ``python -m services.<name>`` with the environment
compose gives it. CPU time and memory are read from ``/proc``, so every process is measured the
same way, ours, the peers' and redis-server's.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.processes import ROOT, RedisServer, Service, Stack, free_port
from harness.waiting import wait_for

__all__ = ["BENCH_ENV", "ROOT", "CpuMeter", "Proc", "RedisServer", "Service", "Stack",
           "calls_between", "cpu_seconds", "free_port", "machine", "pid_of", "pids",
           "raise_fd_limit", "redis_calls", "redis_server", "rss_bytes", "stack", "syscalls",
           "tree",
           "wait_for"]

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# Services log per task at INFO; those lines cost more than the work being measured. The
# per-tenant limits stay on (their checks are part of every submit) but far above the load.
BENCH_ENV = {"LOG_LEVEL": "warning", "HEARTBEAT_S": "1", "LOG_FORMAT": "json",
             "TENANT_RATE_PER_MINUTE": "1000000000", "TENANT_MAX_ACTIVE": "1000000000"}


# --- /proc ------------------------------------------------------------------------------------
def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read().decode()
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on; comm may hold spaces


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                kids.setdefault(int(_stat(int(name))[1]), []).append(int(name))
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (taskiq's CLI runs its worker as a child)."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process, all threads included."""
    try:
        f = _stat(pid)
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / CLK_TCK


def syscalls(pid: int) -> int:
    """Read and write system calls a live process has made (``/proc/<pid>/io``: syscr +
    syscw; socket reads and writes count, the event loop's polls do not). Unlike CPU time it
    does not grow with the machine's load: a figure for comparing runs on a busy machine."""
    try:
        with open(f"/proc/{pid}/io") as f:
            fields = dict(line.split(": ") for line in f.read().splitlines())
    except OSError:
        return 0
    return int(fields["syscr"]) + int(fields["syscw"])


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


@dataclass
class CpuMeter:
    """CPU seconds used by named groups of processes between ``start()`` and ``stop()``."""

    groups: dict[str, list[int]]  # name -> root pids (each counted with its descendants)
    _before: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)

    _calls_before: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)  # read + write syscalls, by group

    def _read(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(p) for root in roots for p in tree(root))
                for name, roots in self.groups.items()}

    def _read_calls(self) -> dict[str, int]:
        return {name: sum(syscalls(p) for root in roots for p in tree(root))
                for name, roots in self.groups.items()}

    def start(self) -> CpuMeter:
        self._calls_before = self._read_calls()
        self._before = self._read()
        return self

    def stop(self) -> dict[str, float]:
        after = self._read()
        calls = self._read_calls()
        self.used = {k: round(after[k] - self._before.get(k, 0.0), 3) for k in after}
        self.calls = {k: calls[k] - self._calls_before.get(k, 0) for k in calls}
        return self.used


# --- machine ----------------------------------------------------------------------------------
def machine() -> dict[str, object]:
    load = os.getloadavg()
    redis_version = ""
    binary = shutil.which("redis-server")
    if binary:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        redis_version = next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())
    return {"cores": os.cpu_count(), "loadavg": [round(x, 2) for x in load],
            "python": platform.python_version(), "redis": redis_version,
            "kernel": platform.release()}


def raise_fd_limit() -> None:
    """1,000 streams need ~3,000 descriptors across processes; children inherit the limit."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# --- processes --------------------------------------------------------------------------------
@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[RedisServer]:
    """A fresh redis-server, no persistence: the same for Sluice and the peers."""
    server = RedisServer(tmp / f"redis-{free_port()}", appendonly=False).start()
    try:
        yield server
    finally:
        server.kill(signal.SIGKILL)


@contextlib.contextmanager
def stack(tmp: Path, redis_url: str, *, processors: int = 1, coordinators: int = 1,
          env: dict[str, str] | None = None, store_url: str = "") -> Iterator[Stack]:
    """The whole system (mock provider, edge, coordinators, processors), torn down on exit;
    on a SQLite file in ``tmp`` unless ``store_url`` names another store."""
    tmp.mkdir(parents=True, exist_ok=True)
    s = Stack(tmp, redis_url, {**BENCH_ENV, **(env or {})}, store_url=store_url)
    try:
        s.up(processors=processors, coordinators=coordinators)
        yield s
    except BaseException:
        print(s.logs(), file=sys.stderr)
        raise
    finally:
        for svc in s.services:  # nothing in flight is worth a graceful drain here
            svc.kill(signal.SIGKILL)


def redis_calls(url: str) -> dict[str, int]:
    """Commands redis-server has run so far, by name (INFO commandstats)."""
    import redis
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def calls_between(before: dict[str, int], after: dict[str, int], n: int) -> dict[str, float]:
    """Commands per task between two ``redis_calls`` readings, busiest first."""
    per = {k: round((v - before.get(k, 0)) / n, 2) for k, v in after.items()}
    return dict(sorted(((k, v) for k, v in per.items() if v >= 0.01), key=lambda x: -x[1]))


def pid_of(server: RedisServer) -> int:
    assert server.proc is not None, "redis-server not started"
    return server.proc.pid


def pids(s: Stack, module: str) -> list[int]:
    return [svc.proc.pid for svc in s.of(module)]


@dataclass
class Proc:
    """A helper process of the bench (a peer's worker), with its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, args: list[str], log: Path, env: dict[str, str]) -> Proc:
        with log.open("ab") as out:
            proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        return cls(name, proc, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group: taskiq's child too
            self.proc.wait(10)

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


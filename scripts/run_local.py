"""``make run``: the whole system on this machine, no Docker.

Starts a redis-server on a free port when REDIS_URL is unset, the mock provider when
AI_BASE_URL is unset, then the edge, a coordinator and a processor, all with the same
variables compose uses. Ctrl-C stops every one of them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_all(procs: list[tuple[str, subprocess.Popen[bytes]]], grace_s: float) -> None:
    for _name, p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for _name, p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def main() -> int:
    env = dict(os.environ)
    env.setdefault("LOG_FORMAT", "console")
    env.setdefault("PYTHONUNBUFFERED", "1")
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(name: str, args: list[str]) -> None:
        procs.append((name, subprocess.Popen(args, cwd=ROOT, env=env)))

    if "REDIS_URL" not in os.environ:
        port = free_port()
        data = Path(tempfile.mkdtemp(prefix="sluice-redis-"))
        redis_bin = shutil.which("redis-server") or "redis-server"
        start("redis", [redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--dir",
                        str(data), "--appendonly", "yes", "--maxmemory-policy", "noeviction",
                        "--loglevel", "warning"])
        env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.3)
    if "AI_BASE_URL" not in os.environ:
        start("mockai", [sys.executable, "-m", "services.mockai"])
    for name in ("edge", "coordinator", "processor"):
        start(name, [sys.executable, "-m", f"services.{name}"])
    print(f"sluice: edge on http://localhost:{env.get('EDGE_PORT', '8080')} "
          f"(redis {env['REDIS_URL']}); Ctrl-C stops everything", flush=True)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            for name, p in procs:
                if p.poll() is not None:
                    print(f"sluice: {name} exited with {p.returncode}; stopping", flush=True)
                    stopping = True
            time.sleep(0.2)
    finally:
        # Services first, so they drain while Redis is still there; Redis last.
        services = [(n, p) for n, p in procs if n != "redis"]
        stop_all(services, 25)
        stop_all([(n, p) for n, p in procs if n == "redis"], 10)
    return 0


if __name__ == "__main__":
    sys.exit(main())

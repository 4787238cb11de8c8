"""``make run``: the whole system on this machine, no Docker.

Starts a redis-server on a free port when REDIS_URL is unset, the mock provider when
AI_BASE_URL is unset, then the edge, a coordinator and a processor, all with the same
variables compose uses. Each process that serves /metrics on a port of its own gets its own:
METRICS_PORT (default 9100) is the coordinator's, the next port the processor's, the one after
the mock's; the edge serves /metrics on EDGE_PORT. Once the edge's /api/health answers, a
banner says where everything is. Ctrl-C stops every one of them.
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
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.config import MOCK_PORT, ConfigError, Env, Provider, mask_url

ROOT = Path(__file__).resolve().parent.parent
METRICS_BASE = 9100  # compose's METRICS_PORT, and deploy/prometheus.yml's
METRICS_ORDER = ("coordinator", "processor", "mockai")  # METRICS_PORT, +1, +2
READY_S = 60.0  # how long the edge may take to answer /api/health before we give up


@dataclass(frozen=True, slots=True)
class Plan:
    """Where everything will listen, decided before anything starts."""

    edge_port: int
    mock_port: int | None  # None: a provider of the user's (AI_BASE_URL)
    metrics: dict[str, int]  # service -> its /metrics port
    provider_url: str
    model: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def plan(env: dict[str, str]) -> Plan:
    """The ports and the provider, or ConfigError naming the variable to change."""
    e = Env(env)
    provider = Provider.from_env(e)  # AI_MODEL is required with AI_BASE_URL: fail here, first
    edge_port = e.integer("EDGE_PORT", 8080, min_value=1, max_value=65535)
    mock = None if e.optional("AI_BASE_URL") else e.integer(
        "MOCKAI_PORT", MOCK_PORT, min_value=1, max_value=65535)
    base = e.integer("METRICS_PORT", METRICS_BASE, min_value=1, max_value=65535 - 2)
    metrics = {name: base + i for i, name in enumerate(METRICS_ORDER)
               if name != "mockai" or mock is not None}
    wanted = [("EDGE_PORT", edge_port)] + ([("MOCKAI_PORT", mock)] if mock else []) + [
        (f"METRICS_PORT (+{i}, the {name}'s /metrics)" if i else "METRICS_PORT", port)
        for i, (name, port) in enumerate(metrics.items())]
    seen: dict[int, str] = {}
    for name, port in wanted:
        if port in seen:
            raise ConfigError(f"{name}: port {port} is also {seen[port]}; make run gives every "
                              "service its own port, so move one of them")
        seen[port] = name
        if port_taken(port):
            raise ConfigError(f"{name}: port {port} is already in use on this machine; set "
                              f"{name.split(' ')[0]} to a free one")
    return Plan(edge_port, mock, metrics, str(provider.ai_base_url), provider.ai_model)


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


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def banner(p: Plan, redis_url: str) -> str:
    edge = f"http://localhost:{p.edge_port}"
    metrics = [f"edge {edge}/metrics"] + [
        f"{name} http://localhost:{port}/metrics" for name, port in p.metrics.items()]
    provider = (f"mock provider {p.provider_url}" if p.mock_port is not None
                else f"provider {p.provider_url} (AI_BASE_URL)")
    return "\n".join([
        "sluice is up; Ctrl-C stops everything",
        f"  edge       {edge}  (POST /api/tasks, OpenAI-compatible {edge}/v1)",
        f"  dashboard  {edge}/dashboard",
        f"  provider   {provider}",
        f"  model      {p.model}",
        f"  metrics    {metrics[0]}",
        *(f"             {m}" for m in metrics[1:]),
        f"  redis      {mask_url(redis_url)}",
    ])


def main() -> int:
    env = dict(os.environ)
    env.setdefault("LOG_FORMAT", "console")
    env.setdefault("PYTHONUNBUFFERED", "1")
    try:
        p = plan(env)
    except ConfigError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 2
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(name: str, args: list[str], **extra: str) -> None:
        procs.append((name, subprocess.Popen(args, cwd=ROOT, env={**env, **extra})))

    def exited() -> str | None:
        for name, proc in procs:
            if proc.poll() is not None:
                return f"{name} exited with {proc.returncode}"
        return None

    def wait_until(ready: Callable[[], bool], what: str) -> str | None:
        deadline = time.monotonic() + READY_S
        while not ready():
            if (gone := exited()) is not None:
                return gone
            if time.monotonic() > deadline:
                return f"{what} did not answer within {READY_S:.0f} s"
            time.sleep(0.1)
        return None

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    problem: str | None = None
    try:
        if "REDIS_URL" not in os.environ:
            port = free_port()
            data = Path(tempfile.mkdtemp(prefix="sluice-redis-"))
            redis_bin = shutil.which("redis-server") or "redis-server"
            start("redis", [redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--dir",
                            str(data), "--appendonly", "yes", "--maxmemory-policy",
                            "noeviction", "--loglevel", "warning"])
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            problem = wait_until(lambda: redis_answers(port), "redis-server")
        if problem is None and p.mock_port is not None:
            start("mockai", [sys.executable, "-m", "services.mockai"],
                  MOCKAI_PORT=str(p.mock_port), METRICS_PORT=str(p.metrics["mockai"]))
            problem = wait_until(lambda: answers(f"http://127.0.0.1:{p.mock_port}/health"),
                                 "the mock provider")
        if problem is None:
            for name in ("edge", "coordinator", "processor"):
                start(name, [sys.executable, "-m", f"services.{name}"],
                      METRICS_PORT=str(p.metrics.get(name, 0)))
            problem = wait_until(
                lambda: answers(f"http://127.0.0.1:{p.edge_port}/api/health"), "the edge")
        if problem is None and not stopping:
            print(banner(p, env["REDIS_URL"]), flush=True)
        while problem is None and not stopping:
            problem = exited()
            time.sleep(0.2)
        if problem is not None:
            print(f"sluice: {problem}; stopping", file=sys.stderr, flush=True)
    finally:
        # Services first, so they drain while Redis is still there; Redis last.
        stop_all([(n, pr) for n, pr in procs if n != "redis"], 25)
        stop_all([(n, pr) for n, pr in procs if n == "redis"], 10)
    return 0 if problem is None else 1


if __name__ == "__main__":
    sys.exit(main())

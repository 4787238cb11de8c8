"""Real processes for integration and end-to-end tests: redis-server on a free loopback port,
and every Sluice service started as ``python -m services.<name>`` with the same environment
variables compose gives it. Nothing here replaces our own code with a fake."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # reported if the wait fails
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc!r})" if last_exc else ""))


@dataclass
class RedisServer:
    """A redis-server process we own, so tests may kill and restart it."""

    dir: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = True
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always", "--maxmemory-policy", "noeviction",
                "--logfile", str(self.dir / "redis.log")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(self._ping, 10, f"redis-server on port {self.port}")
        return self

    def _ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def external_or_own_redis(tmp: Path) -> tuple[str, RedisServer | None, object | None]:
    """REDIS_URL when given; else our own redis-server; else testcontainers when a Docker
    engine is reachable."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None, None
    if shutil.which("redis-server"):
        server = RedisServer(tmp / "redis-session", appendonly=False).start()
        return server.url, server, None
    from testcontainers.redis import RedisContainer  # only when no redis-server binary

    container = RedisContainer("redis:7").start()
    host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
    return f"redis://{host}:{port}/0", None, container


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(60)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class Stack:
    """The whole system as processes: mock provider, edge, coordinators, processors."""

    tmp: Path
    redis_url: str
    env_overrides: dict[str, str] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: "t" + uuid.uuid4().hex[:10])
    services: list[Service] = field(default_factory=list)
    edge_port: int = field(default_factory=free_port)
    mock_port: int = field(default_factory=free_port)
    counter: int = 0

    @property
    def store_path(self) -> Path:
        return self.tmp / "sluice.db"

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    @property
    def mock_url(self) -> str:
        return f"http://127.0.0.1:{self.mock_port}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MOCKAI_", "AI_"))}
        env.update({
            "REDIS_URL": self.redis_url, "REDIS_PREFIX": self.prefix,
            "STORE_PATH": str(self.store_path), "LOG_FORMAT": "json", "LOG_LEVEL": "info",
            "EDGE_HOST": "127.0.0.1", "EDGE_PORT": str(self.edge_port),
            "MOCKAI_PORT": str(self.mock_port), "MOCKAI_HOST": "127.0.0.1",
            "AI_BASE_URL": f"{self.mock_url}/v1", "AI_FORWARD_METADATA": "true",
            "MOCKAI_TTFT_MS": "5", "MOCKAI_TOKENS_PER_S": "0",
            "HEARTBEAT_S": "0.2", "PYTHONUNBUFFERED": "1",
        })
        env.update(self.env_overrides)
        env.update(extra)
        return env

    def start(self, module: str, **extra: str) -> Service:
        self.counter += 1
        name = f"{module}-{self.counter}"
        log = self.tmp / f"{name}.log"
        env = self.env(**extra)
        env.setdefault("PROCESSOR_NAME", f"proc-{self.prefix}-{self.counter}")
        env.setdefault("COORDINATOR_NAME", f"coord-{self.prefix}-{self.counter}")
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", f"services.{module}"], cwd=ROOT,
                                    env=env, stdout=out, stderr=subprocess.STDOUT)
        svc = Service(name, proc, log)
        self.services.append(svc)
        return svc

    def up(self, processors: int = 1, coordinators: int = 1, mock: bool = True) -> Stack:
        if mock:
            self.start("mockai")
            wait_for(lambda: httpx.get(f"{self.mock_url}/health").status_code == 200, 20,
                     "mock provider")
        self.start("edge")
        wait_for(lambda: httpx.get(f"{self.edge_url}/api/health").status_code == 200, 20,
                 "edge health")
        for _ in range(coordinators):
            self.start("coordinator")
        for _ in range(processors):
            self.start("processor")
        self.wait_alive(processors, coordinators)
        return self

    def wait_alive(self, processors: int, coordinators: int, timeout: float = 20) -> None:
        def ready() -> bool:
            s = httpx.get(f"{self.edge_url}/api/async-status").json()
            return (s["processors"]["count"] >= processors
                    and s["coordinators"]["count"] >= coordinators)
        wait_for(ready, timeout, f"{processors} processors and {coordinators} coordinators")

    def of(self, module: str) -> list[Service]:
        return [s for s in self.services if s.name.startswith(module + "-") and s.alive]

    def down(self) -> None:
        for svc in reversed(self.services):
            svc.kill(signal.SIGTERM if svc.alive else signal.SIGKILL)
        for svc in self.services:
            if svc.alive:
                svc.kill(signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} (rc={s.proc.poll()})\n{s.tail()}" for s in self.services)


@contextlib.contextmanager
def running_stack(tmp: Path, redis_url: str, **kw: object) -> Iterator[Stack]:
    env = {k: str(v) for k, v in kw.pop("env", {}).items()}  # type: ignore[attr-defined]
    stack = Stack(tmp, redis_url, env)
    try:
        stack.up(**kw)  # type: ignore[arg-type]
        yield stack
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.down()

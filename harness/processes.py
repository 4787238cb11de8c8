"""Real processes for the tests and the benchmarks: redis-server on a free loopback port, and
every Sluice service started as ``python -m services.<name>`` with the same environment
variables compose gives it. Nothing here replaces our own code with a fake."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import certifi
import httpx

from harness.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
# The TLS context of the tests' own HTTP clients, made once: a client made without one loads
# the CA bundle, tens of ms of CPU, and the tests make hundreds of clients (a poll is one).
CLIENT_TLS = ssl.create_default_context(cafile=certifi.where())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """A CA and a server certificate it signed (for 127.0.0.1), as PEM files."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """Self-signed CA plus a server certificate for 127.0.0.1, made with the openssl CLI."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    cert, key, csr = folder / "redis.crt", folder / "redis.key", folder / "redis.csr"
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for cmd in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
         "-days", "2", "-subj", "/CN=sluice-test-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", ext],
    ):
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    return TlsFiles(ca, cert, key)


@dataclass
class RedisServer:
    """A redis-server process we own, so tests may kill and restart it."""

    dir: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = True
    proc: subprocess.Popen[bytes] | None = None
    password: str | None = None  # --requirepass: clients must AUTH
    tls: TlsFiles | None = None  # serve TLS only (--port 0 --tls-port)
    extra_args: list[str] = field(default_factory=list)  # e.g. cluster mode

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        return (f"rediss://{auth}127.0.0.1:{self.port}/0"
                f"?ssl_cert_reqs=required&ssl_ca_certs={self.tls.ca}")

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always", "--maxmemory-policy", "noeviction",
                # Redis times a blocked read out on its cron tick, every 1/hz s: at the default
                # 10, a 10 ms poll (burst mode) waits 100 ms. At 100 short blocks mean it.
                "--hz", "100",
                "--logfile", str(self.dir / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        if self.tls is not None:
            args[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                     "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(self._ping, 10, f"redis-server on port {self.port}")
        return self

    def _ping(self) -> bool:
        with contextlib.ExitStack() as stack:
            s = stack.enter_context(socket.create_connection(("127.0.0.1", self.port), 0.5))
            if self.tls is not None:
                ctx = ssl.create_default_context(cafile=str(self.tls.ca))
                s = stack.enter_context(ctx.wrap_socket(s, server_hostname="127.0.0.1"))
            if self.password:
                pw = self.password.encode()
                s.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw))
            s.sendall(b"PING\r\n")
            reply = b""
            while b"+PONG" not in reply and len(reply) < 256:
                chunk = s.recv(64)
                if not chunk:
                    break
                reply += chunk
            return b"+PONG" in reply

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def free_cluster_port() -> int:
    """A loopback port free for a cluster node, whose cluster bus (port + 10000) is free too."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20_000, 55_000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10_000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


CLUSTER_SLOTS = 16384
# How long a service (a Python process and its imports) may take to start answering: a guard
# against a hang, not a measure. Generous: on a 2-core machine shared with other test runs, a
# start that takes 1 s alone has taken more than 20 s.
START_S = 60


@dataclass
class RedisClusterServers:
    """A Redis Cluster of ``masters`` redis-server processes (no replicas) on loopback ports:
    the slots split evenly over the masters, as ``redis-cli --cluster create`` splits them."""

    dir: Path
    masters: int = 3
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The URL a Sluice service is given: one seed node, the scheme selects cluster mode."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def start(self) -> RedisClusterServers:
        for i in range(self.masters):
            node = RedisServer(self.dir / f"node{i}", port=free_cluster_port(), appendonly=False,
                               extra_args=["--cluster-enabled", "yes",
                                           "--cluster-config-file", "nodes.conf",
                                           "--cluster-node-timeout", "5000"])
            self.nodes.append(node.start())
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is not installed (it comes with redis-server)")
        # What `redis-cli --cluster create` does, without its waits of a whole second for the
        # nodes to agree (3 s of every session that starts a cluster): each master takes its
        # share of the slots and a config epoch of its own, then the first meets the others,
        # and gossip spreads the slot map.
        share = CLUSTER_SLOTS // self.masters
        for i, port in enumerate(self.ports):
            last = CLUSTER_SLOTS - 1 if i == self.masters - 1 else (i + 1) * share - 1
            self.cli(port, "CLUSTER", "ADDSLOTSRANGE", str(i * share), str(last))
            self.cli(port, "CLUSTER", "SET-CONFIG-EPOCH", str(i + 1))
        for port in self.ports[1:]:
            self.cli(self.ports[0], "CLUSTER", "MEET", "127.0.0.1", str(port))
        for port in self.ports:
            def ok(port: int = port) -> bool:
                return "cluster_state:ok" in self.cli(port, "CLUSTER", "INFO")
            wait_for(ok, 30, f"cluster_state:ok on node {port}", interval=0.1)
        return self

    def cli(self, port: int, *args: str) -> str:
        out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
                             check=True, capture_output=True, text=True, timeout=10)
        return out.stdout

    def owner_of(self, key: str) -> int:
        """The port of the master serving the slot of ``key``."""
        slot = int(self.cli(self.ports[0], "CLUSTER", "KEYSLOT", key).strip())
        for line in self.cli(self.ports[0], "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2]:
                continue
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for span in fields[8:]:
                lo, _, hi = span.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return port
        raise AssertionError(f"no master serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


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


def _ok(url: str) -> bool:
    return httpx.get(url, verify=CLIENT_TLS).status_code == 200


def sqlite_store(tmp: Path) -> str:
    return str(tmp / "sluice.db")


# The store a new stack gets (its STORE_URL), given the stack's folder. The e2e and chaos
# suites run once per store: their `stack_store` fixture swaps this for a PostgreSQL database.
new_store: Callable[[Path], str] = sqlite_store


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
    store_url: str = ""

    def __post_init__(self) -> None:
        if not self.store_url:
            self.store_url = new_store(self.tmp)

    @property
    def store_path(self) -> Path | str:
        """Where the rows are, for tests.client.rows: the SQLite file, or the
        postgresql:// URL."""
        if "://" in self.store_url:
            return self.store_url
        return Path(self.store_url)

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    @property
    def mock_url(self) -> str:
        return f"http://127.0.0.1:{self.mock_port}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MOCKAI_", "AI_", "STORE_"))}
        env.update({
            "REDIS_URL": self.redis_url, "REDIS_PREFIX": self.prefix,
            "STORE_URL": self.store_url, "LOG_FORMAT": "json", "LOG_LEVEL": "info",
            "EDGE_HOST": "127.0.0.1", "EDGE_PORT": str(self.edge_port),
            "MOCKAI_PORT": str(self.mock_port), "MOCKAI_HOST": "127.0.0.1",
            # The mock's model: the edge refuses a model outside AI_MODELS (default: AI_MODEL).
            "AI_BASE_URL": f"{self.mock_url}/v1", "AI_MODEL": "mock-r1",
            "AI_FORWARD_METADATA": "true",
            "MOCKAI_TTFT_MS": "5", "MOCKAI_TOKENS_PER_S": "0",
            "HEARTBEAT_S": "0.2", "PYTHONUNBUFFERED": "1",
        })
        env.update(self.env_overrides)
        env.update(extra)
        return env

    def start(self, module: str, cwd: Path | None = None, **extra: str) -> Service:
        """``python -m services.<module>``; ``cwd``: a working directory of its own (another
        host, as far as files go), the code still found through PYTHONPATH."""
        self.counter += 1
        name = f"{module}-{self.counter}"
        log = self.tmp / f"{name}.log"
        env = self.env(**extra)
        env.setdefault("PROCESSOR_NAME", f"proc-{self.prefix}-{self.counter}")
        env.setdefault("COORDINATOR_NAME", f"coord-{self.prefix}-{self.counter}")
        if cwd is not None:
            cwd.mkdir(parents=True, exist_ok=True)
            env["PYTHONPATH"] = str(ROOT)
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", f"services.{module}"],
                                    cwd=cwd or ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
        svc = Service(name, proc, log)
        self.services.append(svc)
        return svc

    def up(self, processors: int = 1, coordinators: int = 1, mock: bool = True) -> Stack:
        if mock:
            self.start("mockai")
            wait_for(lambda: _ok(f"{self.mock_url}/health"), START_S, "mock provider")
        self.start("edge")
        wait_for(lambda: _ok(f"{self.edge_url}/api/health"), START_S, "edge health")
        for _ in range(coordinators):
            self.start("coordinator")
        for _ in range(processors):
            self.start("processor")
        self.wait_alive(processors, coordinators)
        return self

    @property
    def auth_headers(self) -> dict[str, str]:
        """A key of EDGE_API_KEYS, when the stack has any, for the harness's own requests."""
        keys = self.env_overrides.get("EDGE_API_KEYS", "")
        first = keys.replace(",", "\n").split("\n")[0].strip()
        return {"Authorization": f"Bearer {first.split(':')[0]}"} if first else {}

    def wait_alive(self, processors: int, coordinators: int, timeout: float = START_S) -> None:
        def ready() -> bool:
            s = httpx.get(f"{self.edge_url}/api/async-status", headers=self.auth_headers,
                          verify=CLIENT_TLS).json()
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

    def logged(self, module: str, event: str, **fields: str) -> bool:
        """Whether a process of ``module`` logged the structlog ``event`` (LOG_FORMAT=json),
        with these string ``fields`` on the same line."""
        wanted = {"event": event, **fields}
        return any(all(line.get(k) == v for k, v in wanted.items())
                   for s in self.services if s.name.startswith(module + "-")
                   for line in json_lines(s.log.read_text(errors="replace")))


def json_lines(text: str) -> Iterator[dict[str, Any]]:
    """The JSON objects among a log's lines (a service may print other lines too)."""
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                yield obj


@contextlib.contextmanager
def running_stack(tmp: Path, redis_url: str, **kw: object) -> Iterator[Stack]:
    env = {k: str(v) for k, v in kw.pop("env", {}).items()}  # type: ignore[attr-defined]
    prefix = kw.pop("prefix", None)  # REDIS_PREFIX; a fresh one by default
    store_url = str(kw.pop("store_url", ""))  # STORE_URL; new_store's by default
    stack = Stack(tmp, redis_url, env, store_url=store_url) if prefix is None else \
        Stack(tmp, redis_url, env, prefix=str(prefix), store_url=store_url)
    try:
        stack.up(**kw)  # type: ignore[arg-type]
        yield stack
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.down()

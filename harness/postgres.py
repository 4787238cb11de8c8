"""A real PostgreSQL for tests: Debian's binaries, ``initdb`` and ``pg_ctl`` on a temporary
directory and a free loopback port, as the tests do with redis-server.

PostgreSQL refuses to run as root, and CI runs as root: then its binaries run as the
``postgres`` user (the Debian package creates it) on a directory that user owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from harness.processes import free_port
from harness.waiting import wait_for

SUPERUSER = "sluice"


def pg_binary(name: str) -> str:
    """``name`` from the newest /usr/lib/postgresql/<major>/bin, else from PATH."""
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                         key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                         reverse=True):
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError("PostgreSQL is not installed (make test installs Debian's "
                           "postgresql package)")
    return found


def _as_postgres() -> dict[str, Any]:
    """subprocess arguments that drop root for the ``postgres`` user (nothing otherwise)."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


def run_sql(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """One statement on a fresh connection, from synchronous test code."""
    async def go() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return [tuple(r) for r in await conn.fetch(sql, *params)]
        finally:
            await conn.close()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(go())
    # Called from async code (the benchmarks): a loop of its own, on another thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result()


def memory_dir() -> Path:
    """A new folder for a test server's files, in /dev/shm when there is one: initdb, a copy
    of a cluster and CREATE DATABASE write thousands of small files, several times faster in
    memory (a tmpfs keeps them through a kill -9 of the server all the same)."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="sluice-pg-", dir=base))


@dataclass
class PostgresServer:
    """A PostgreSQL cluster we own, so tests may kill -9 and restart it."""

    port: int = field(default_factory=free_port)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sluice-pg-")))
    # Without fsync: a process kill (what the tests do) keeps the OS page cache, so committed
    # rows survive it all the same; only a machine crash would lose them.
    settings: dict[str, str] = field(
        default_factory=lambda: {"fsync": "off", "full_page_writes": "off"})

    @property
    def data(self) -> Path:
        return self.dir / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        subprocess.run(list(args), check=True, capture_output=True, timeout=120,
                       env={**os.environ, "LC_ALL": "C.UTF-8"}, **_as_postgres())

    def init(self, like: Path | None = None) -> PostgresServer:
        """``initdb``; or, given ``like`` (a data directory initdb made and no server ever
        ran on), a copy of it: the same cluster for a tenth of the time."""
        if os.geteuid() == 0:  # tempfile made it 0700 for root: hand it to postgres
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        if like is not None:
            self._run("cp", "-a", str(like), str(self.data))
            return self
        self._run(pg_binary("initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        return self

    def start(self) -> PostgresServer:
        # No unix socket: its lock file would outlive a kill -9 where nobody reaps the dead
        # postmaster (a container's PID 1 may not), and the restart would refuse it.
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   "-c unix_socket_directories='' -c max_connections=300 "
                   + " ".join(f"-c {k}={v}" for k, v in self.settings.items()))
        self._run(pg_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "pg.log"),
                  "-o", options, "-w", "-t", "60", "start")
        wait_for(lambda: run_sql(self.url(), "SELECT 1"), 30, f"PostgreSQL on {self.port}")
        return self

    @property
    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def kill(self) -> None:
        """kill -9 the postmaster and every process it started.

        Each backend is a session leader of its own (PostgreSQL's InitPostmasterChild calls
        setsid), so they are found as the postmaster's children, not as its process group:
        killed with the postmaster's group alone, a backend would answer its connection once
        more before it noticed. The postmaster is stopped first, so it forks no new one."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        family = [*_children(pid), pid]
        for member in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
        wait_for(lambda: not any(alive(p) for p in family), 10, "PostgreSQL to die")
        # The same for postmaster.pid: a zombie postmaster's pid looks alive; the lock is stale.
        with contextlib.suppress(FileNotFoundError):
            (self.data / "postmaster.pid").unlink()

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(pg_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                      "stop")
        self.kill()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def new_database(self, template: str | None = None) -> str:
        """A database of its own for one stack or test; its URL. ``template``: the name of a
        database it starts as a copy of (one no one is connected to)."""
        name = "t" + uuid.uuid4().hex[:12]
        run_sql(self.url(), f"CREATE DATABASE {name}"
                + (f" TEMPLATE {template}" if template else ""))
        return self.url(name)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Running, and not a zombie nobody reaped (a container's PID 1 may not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"

"""What the scenarios share: the run context, the load process, waiting on the store."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.procs import BENCH_ENV, ROOT, Stack, wait_for
from harness.waiting import until

# The fast mock of the end-to-end comparison: no delays, 10 reasoning + 40 content tokens.
FAST_MOCK = {"MOCKAI_TTFT_MS": "0", "MOCKAI_TOKENS_PER_S": "0", "MOCKAI_CONTENT_TOKENS": "40",
             "MOCKAI_REASONING_TOKENS": "10"}


@dataclass
class Row:
    """One line of the report: a figure, and its target when it has one."""

    scenario: str
    metric: str
    value: str
    target: str = ""
    ok: bool | None = None  # None: no target, or not measurable in this run


@dataclass
class Ctx:
    tmp: Path
    quick: bool
    profile: Path | None = None
    rows: list[Row] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def dir(self, name: str) -> Path:
        d = self.tmp / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def row(self, scenario: str, metric: str, value: str, target: str = "",
            ok: bool | None = None) -> None:
        self.rows.append(Row(scenario, metric, value, target, ok))


class BenchError(RuntimeError):
    """A scenario could not complete; the message says what to look at."""


async def run_json(args: list[str], env: dict[str, str] | None = None,
                   limit_s: float = 300) -> dict[str, Any]:
    """Run a helper process that prints one JSON object as its last stdout line."""
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError(f"{' '.join(args[:4])}... took more than {limit_s} s") from None
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(args[:4])}... exited {proc.returncode}: "
                         f"{err.decode(errors='replace')[-2000:]}")
    lines = out.decode().strip().splitlines()
    result: dict[str, Any] = orjson.loads(lines[-1])
    return result


async def loadgen(url: str, n: int, conns: int = 50, warmup: int = 0,
                  metadata: Any = None, client: str = "aiohttp") -> dict[str, Any]:
    """``bench.loadgen`` as a separate process; fails unless every request got a 202."""
    args = [sys.executable, "-m", "bench.loadgen", "--url", url, "--n", str(n),
            "--conns", str(conns), "--warmup", str(warmup), "--client", client]
    if metadata is not None:
        args += ["--metadata", orjson.dumps(metadata).decode()]
    out = await run_json(args)
    bad = {k: v for k, v in out["statuses"].items() if k != "202"}
    if bad:
        raise BenchError(f"submit answered {bad} (expected 202 for all {n})")
    return out


def query(db: Path | str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """A read of the store: the SQLite file, or a postgresql:// URL (``Stack.store_path``)."""
    if isinstance(db, str) and "://" in db:
        return _pg_query(db, sql, *params)
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    except sqlite3.OperationalError:  # not created yet
        return []
    try:
        return list(conn.execute(sql, params).fetchall())
    except sqlite3.OperationalError:  # the table is not there yet
        return []
    finally:
        conn.close()


def _pg_query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import asyncpg

    from harness.postgres import run_sql
    try:
        return run_sql(url, sql, *params)
    except asyncpg.UndefinedTableError:  # the table is not there yet
        return []


def count_rows(db: Path | str) -> int:
    rows = query(db, "SELECT COUNT(*) FROM tasks")
    return int(rows[0][0]) if rows else 0


async def wait_rows(db: Path | str, count: int, limit_s: float, what: str) -> None:
    """Poll the store until ``count`` task rows are there (20 ms granularity)."""
    have = 0

    async def stored() -> bool:
        nonlocal have
        have = await asyncio.to_thread(count_rows, db)
        return have >= count
    try:
        await until(stored, limit_s, f"{count} task rows ({what})", interval=0.02)
    except AssertionError as exc:
        raise BenchError(f"{what}: {have} of {count} tasks stored after {limit_s:.0f} s") \
            from exc


@contextlib.contextmanager
def mock_only(tmp: Path, redis_url: str, env: dict[str, str]) -> Iterator[Stack]:
    """Only the mock provider (for the peers), started the way the stack starts it."""
    tmp.mkdir(parents=True, exist_ok=True)
    s = Stack(tmp, redis_url, {**BENCH_ENV, **env})
    try:
        s.start("mockai")
        wait_for(lambda: httpx.get(f"{s.mock_url}/health").status_code == 200, 20, "mock")
        yield s
    finally:
        for svc in s.services:
            svc.kill(signal.SIGKILL)


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}/s" if x >= 100 else f"{x:,.1f}/s"

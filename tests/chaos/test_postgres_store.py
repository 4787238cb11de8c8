"""Cases only the networked store has: PostgreSQL killed with -9 under load and restarted,
and a processor on a second host (its own working directory, no file of the first one)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.postgres import PostgresServer
from harness.processes import running_stack
from harness.waiting import wait_for
from tests.chaos.conftest import CHAOS_ENV, slow
from tests.client import rows


@pytest.fixture(autouse=True)
def _on_each_store() -> str:
    """These cases are PostgreSQL's own: not run once per store like the rest."""
    return "postgresql"


def test_kill_9_postgres_with_200_tasks_in_flight_every_task_ends_with_one_row(
        tmp_path: Path, redis_url: str, own_postgres: PostgresServer, api_factory: Any) -> None:
    env = {**CHAOS_ENV, "PROCESSOR_CONCURRENCY": "64", "BATCH_SIZE": "8"}
    with running_stack(tmp_path, redis_url, processors=2, env=env,
                       store_url=own_postgres.new_database()) as stack:
        api = api_factory(stack.edge_url)
        ids = [api.submit(slow(tokens_per_s=200, content_tokens=20)) for _ in range(200)]
        db = stack.store_path
        wait_for(lambda: rows(db, "SELECT COUNT(*) FROM tasks")[0][0] >= 10, 60,
                 "the first rows")
        own_postgres.kill()
        down_at = time.monotonic()
        # Finished results wait in the processors, retried, while the store is away.
        wait_for(lambda: any("store_retry" in s.log.read_text() for s in stack.of("processor")),
                 30, "a processor to retry a write")
        # The edge still answers what Redis knows, and 503 + Retry-After for the rest.
        assert api.get(ids[-1])["id"] == ids[-1]  # a 200, from Redis
        r = httpx.get(f"{stack.edge_url}/api/dead-letters", timeout=30)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "store_unavailable" and r.headers["Retry-After"]
        assert httpx.get(f"{stack.edge_url}/api/health", timeout=30).status_code == 503
        in_flight = 200 - sum(api.get(i)["status"] == "succeeded" for i in ids)
        own_postgres.start()
        for task_id in ids:
            assert api.wait_terminal(task_id, 120)["status"] == "succeeded", task_id
        print(f"chaos postgres kill -9: {in_flight} of 200 tasks unfinished while it was down, all "
              f"succeeded {time.monotonic() - down_at:.1f}s after it")
        assert rows(db, "SELECT COUNT(*), COUNT(DISTINCT id) FROM tasks") == [(200, 200)]
        stored = {i for (i,) in rows(db, "SELECT id FROM tasks WHERE status = 'succeeded'")}
        assert stored == set(ids)


def test_a_processor_on_a_second_host_finishes_tasks(
        tmp_path: Path, redis_url: str, pg_url: str, api_factory: Any) -> None:
    (tmp_path / "host-a").mkdir()
    with running_stack(tmp_path / "host-a", redis_url, processors=1, env=CHAOS_ENV,
                       store_url=pg_url) as stack:
        api = api_factory(stack.edge_url)
        host_a = stack.of("processor")[0]
        host_b_dir = tmp_path / "host-b"
        host_b = stack.start("processor", cwd=host_b_dir, PROCESSOR_NAME="proc-host-b")
        stack.wait_alive(processors=2, coordinators=1)
        host_a.kill(signal.SIGSTOP)  # host A stops answering: B must do the work
        try:
            ids = [api.submit(slow(tokens_per_s=100, content_tokens=10)) for _ in range(12)]
            for task_id in ids:
                assert api.wait_terminal(task_id, 90)["status"] == "succeeded", task_id
        finally:
            host_a.kill(signal.SIGCONT)
        stored = rows(stack.store_path, "SELECT id, processor FROM tasks")
        assert sorted(i for i, _p in stored) == sorted(ids)
        assert {p for _i, p in stored} == {"proc-host-b"}
        assert host_b.alive
        assert not list(host_b_dir.iterdir())  # host B made no file: the store is networked

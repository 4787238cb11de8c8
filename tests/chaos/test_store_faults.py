"""Issue 10: a full, deleted or corrupt store gets a clear answer, never silence.

A full disk is stood in for by a file-size limit (RLIMIT_FSIZE, set on the running process
with prlimit): every write past the store's current end fails as it would on a full disk,
while the service's log file (smaller) still takes its lines."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.processes import Service, Stack, running_stack
from harness.waiting import wait_for
from tests.chaos.conftest import CHAOS_ENV, mock_records, slow, tag_of
from tests.client import rows

# About the SQLite file itself (a trigger, a lock, its size, its inode): SQLite alone.
pytestmark = pytest.mark.sqlite_only

def _store_end(stack: Stack) -> int:
    """The size past which a write makes the store grow (its main file or its WAL)."""
    wal = Path(f"{stack.store_path}-wal")
    return max(stack.store_path.stat().st_size, wal.stat().st_size if wal.exists() else 0)


def _limit_file_size(svc: Service, limit: int | None) -> None:
    _soft, hard = resource.prlimit(svc.proc.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(svc.proc.pid, resource.RLIMIT_FSIZE,
                     (resource.RLIM_INFINITY if limit is None else limit, hard))


def _health(stack: Stack) -> httpx.Response:
    return httpx.get(f"{stack.edge_url}/api/health", timeout=10)


def test_a_full_store_holds_answers_until_it_has_room(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    with running_stack(tmp_path, redis_url, processors=0, env=CHAOS_ENV) as stack:
        proc = stack.start("processor", LOG_LEVEL="warning")
        stack.wait_alive(1, 1)
        api = api_factory(stack.edge_url)
        limit = _store_end(stack) + 1
        assert proc.log.stat().st_size < limit
        _limit_file_size(proc, limit)
        bodies = [slow(tokens_per_s=500, content_tokens=10) for _ in range(3)]
        ids = [api.submit(b) for b in bodies]
        wait_for(lambda: "store_write_failed" in proc.log.read_text(), 30,
                 "the processor to find the store full")
        assert proc.alive and all(api.get(t)["status"] == "running" for t in ids)
        assert httpx.get(f"{stack.edge_url}/api/async-status").json()["processors"]["count"] == 1
        _limit_file_size(proc, None)  # room again
        for task_id in ids:
            assert api.wait_terminal(task_id, 30)["status"] == "succeeded"
        for body in bodies:  # each answer was kept, not generated again
            assert len(mock_records(stack, tag_of(body))) == 1
        assert rows(stack.store_path, "SELECT COUNT(*) FROM tasks") == [(3,)]


def test_accepted_means_202_when_the_idempotency_record_cannot_be_stored(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    with running_stack(tmp_path, redis_url, processors=1, env=CHAOS_ENV) as stack:
        [edge] = stack.of("edge")
        api = api_factory(stack.edge_url)
        limit = _store_end(stack) + 1
        assert edge.log.stat().st_size < limit
        _limit_file_size(edge, limit)
        r = api.http.post("/api/tasks", json={"prompt": "hello"},
                          headers={"Idempotency-Key": "full-disk-1"})
        assert r.status_code == 202, r.text
        task_id = r.json()["id"]
        assert "idempotency_key_not_stored" in edge.log.read_text()
        assert api.wait_terminal(task_id, 30)["status"] == "succeeded"
        # The task's holder wrote the durable record with the task's row.
        assert rows(stack.store_path, "SELECT task_id FROM idempotency_keys WHERE key = ?",
                    "full-disk-1") == [(task_id,)]
        _limit_file_size(edge, None)
        again = api.http.post("/api/tasks", json={"prompt": "hello"},
                              headers={"Idempotency-Key": "full-disk-1"})
        assert again.status_code == 202 and again.json()["id"] == task_id


def test_a_deleted_store_is_reported_and_refused_on_restart(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    with running_stack(tmp_path, redis_url, processors=1, env=CHAOS_ENV) as stack:
        api = api_factory(stack.edge_url)
        done = api.submit({"prompt": "finished before the store was lost"})
        assert api.wait_terminal(done, 30)["status"] == "succeeded"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{stack.store_path}{suffix}").unlink(missing_ok=True)
        health = _health(stack)
        assert health.status_code == 503
        assert health.json()["checks"]["store"].startswith("down: deleted"), health.text
        for module in ("processor", "edge"):
            for svc in stack.of(module):
                svc.kill(signal.SIGTERM)
            new = stack.start(module)
            wait_for(lambda new=new: not new.alive, 30, f"a new {module} to refuse to start")
            assert new.proc.returncode == 2
            assert "no deployment id" in new.log.read_text()


def test_a_corrupt_store_stops_a_processor_and_is_reported(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    env = {**CHAOS_ENV, "STORE_CHECK_INTERVAL_S": "0"}
    with running_stack(tmp_path, redis_url, processors=1, env=env) as stack:
        api = api_factory(stack.edge_url)
        assert api.wait_terminal(api.submit({"prompt": "one"}), 30)["status"] == "succeeded"
        [running] = stack.of("processor")
        conn = sqlite3.connect(stack.store_path)  # every page into the main file, as a
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # checkpoint puts them in time
        conn.close()
        size = stack.store_path.stat().st_size
        with stack.store_path.open("r+b") as f:  # garbage over every page but the first
            f.seek(4096)
            f.write(os.urandom(size - 4096))
        # The running processor either still writes (its cached pages) or exits: never hangs.
        task_id = api.submit({"prompt": "two"})
        wait_for(lambda: (not running.alive and running.proc.returncode not in (0, None))
                 or api.get(task_id)["status"] in ("succeeded", "failed"), 30,
                 "the processor to finish the task or to exit")
        if running.alive:
            running.kill(signal.SIGTERM)
        health = _health(stack)
        assert health.status_code == 503
        assert health.json()["checks"]["store"].startswith("down: corrupt"), health.text
        new = stack.start("processor")
        wait_for(lambda: not new.alive, 30, "a processor on a corrupt store to exit")
        assert new.proc.returncode not in (0, None)
        assert "service_exiting" in new.log.read_text()

"""Issue 10: one task whose result the store refuses must not stall the fleet.

The store refuses the poison task's successful row (a trigger stands for any value the
database rejects, as a 2^63 token count once did). Before, the error escaped the task, the
processor's TaskGroup began to abort and hung, and the next processor to reclaim the batch
hung the same way. Now the error stays with its task: the task is run again, each run counts
an attempt, and after MAX_ATTEMPTS it fails for good; the other tasks, including those whose
rows shared its transaction, succeed, and both processors live on."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.processes import running_stack
from tests.chaos.conftest import CHAOS_ENV, mock_records, slow, tag_of
from tests.client import rows

POISON = "poison-marker"


# About the SQLite file itself (a trigger, a lock, its size, its inode): SQLite alone.
pytestmark = pytest.mark.sqlite_only

def test_a_poison_result_fails_its_task_and_nothing_else(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    env = {**CHAOS_ENV, "MAX_ATTEMPTS": "3", "BATCH_SIZE": "4"}
    with running_stack(tmp_path, redis_url, processors=2, env=env) as stack:
        conn = sqlite3.connect(stack.store_path)
        with conn:
            conn.execute(
                "CREATE TRIGGER poison BEFORE INSERT ON tasks WHEN NEW.status = 'succeeded' "
                f"AND NEW.request LIKE '%{POISON}%' BEGIN SELECT RAISE(ABORT, 'poison'); END")
        conn.close()
        api = api_factory(stack.edge_url)
        bad = slow(tokens_per_s=200, content_tokens=10)
        bad["prompt"] += f" {POISON}"
        poison_id = api.submit(bad)
        others = [api.submit(slow(tokens_per_s=200, content_tokens=10)) for _ in range(10)]

        task = api.wait_terminal(poison_id, 60)
        assert task["status"] == "failed", task
        assert task["error"]["code"] == "attempts_exhausted" and task["attempts"] == 3
        assert len(mock_records(stack, tag_of(bad))) == 3  # one provider call per attempt
        for task_id in others:
            assert api.wait_terminal(task_id, 60)["status"] == "succeeded", task_id
        assert rows(stack.store_path, "SELECT status FROM tasks WHERE id = ?",
                    poison_id) == [("failed",)]
        # Both processors are alive, and so are their heartbeats: more work still flows.
        assert all(p.alive for p in stack.of("processor")) and len(stack.of("processor")) == 2
        after = [api.submit({"prompt": "after the poison"}) for _ in range(4)]
        for task_id in after:
            assert api.wait_terminal(task_id, 60)["status"] == "succeeded", task_id
        status = httpx.get(f"{stack.edge_url}/api/async-status").json()
        assert status["processors"]["count"] == 2
        logs = "".join(p.log.read_text() for p in stack.of("processor"))
        assert "task_crashed" in logs

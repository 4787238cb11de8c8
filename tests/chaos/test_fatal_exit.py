"""Issue 10: a service that cannot go on exits non-zero, with the error logged, so that its
supervisor restarts it; it never lives on without its heartbeat.

The fatal error here is one no code path expects: the stream a service reads from replaced by
a key of another type (every read answers WRONGTYPE). Before, a TaskGroup aborting on such an
error could wait forever on a task whose cancellation redis-py had swallowed (Python 3.11's
``asyncio.wait_for``): the process stayed up with no heartbeat and never exited."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from harness.processes import running_stack
from harness.waiting import wait_for
from shared.keys import Keys
from tests.chaos.conftest import CHAOS_ENV, client, mock_records, slow, tag_of


@pytest.mark.parametrize("module", ["processor", "coordinator"])
def test_a_service_that_cannot_go_on_exits_non_zero(
        tmp_path: Path, redis_url: str, api_factory: Any, module: str) -> None:
    with running_stack(tmp_path, redis_url, processors=2, coordinators=2, env=CHAOS_ENV) as stack:
        api = api_factory(stack.edge_url)
        for _ in range(6):  # work in flight: tasks mid-call to Redis when the group aborts
            api.submit({"prompt": "busy", "metadata": {"mock": {"tokens_per_s": 50}}})
        keys = Keys(stack.prefix)
        stream = keys.batches_stream if module == "processor" else keys.tasks_stream
        with client(stack) as r:
            r.delete(stream)
            r.set(stream, "not a stream")
        services = stack.of(module)
        for svc in services:
            wait_for(lambda svc=svc: not svc.alive, 30, f"{svc.name} to exit")
            assert svc.proc.returncode != 0, svc.tail()
            text = svc.log.read_text()  # the error, logged as it happened
            assert "service_failed" in text or "service_task_failed" in text


@pytest.mark.sqlite_only  # it holds the SQLite file's write lock
def test_a_processor_stuck_while_stopping_is_hard_exited(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    """The backstop: a processor whose store write is stuck (the file locked by someone else)
    meets a fatal error. Its clean-up would wait on the store for minutes (busy timeout and
    retries); the watchdog ends it a few seconds after the abort began."""
    with running_stack(tmp_path, redis_url, processors=1, env=CHAOS_ENV) as stack:
        api = api_factory(stack.edge_url)
        [proc] = stack.of("processor")
        lock = sqlite3.connect(stack.store_path, isolation_level=None, timeout=30)
        try:
            lock.execute("BEGIN EXCLUSIVE")  # no one else may write until we let go
            body = slow(tokens_per_s=200, content_tokens=5)
            api.submit(body)
            wait_for(lambda: [r for r in mock_records(stack, tag_of(body))
                              if r.get("outcome") == "completed"], 30,
                     "the answer to be done, its row waiting on the locked store")
            keys = Keys(stack.prefix)
            with client(stack) as r:
                r.delete(keys.batches_stream)
                r.set(keys.batches_stream, "not a stream")
            wait_for(lambda: not proc.alive, 20, "the stuck processor to be ended")
            assert proc.proc.returncode == 1
            assert "hard_exit" in proc.log.read_text()
        finally:
            lock.execute("ROLLBACK")
            lock.close()

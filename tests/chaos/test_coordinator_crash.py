"""Chaos 3: the coordinator that opened a batch dies before its timer fires."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import redis

from harness.processes import running_stack
from harness.waiting import wait_for
from shared.keys import Keys
from tests.client import rows
from tests.e2e.test_pipeline import flush_delay_ms


def test_kill_9_coordinator_with_a_pending_timer(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    timeout_ms = 2000
    env = {"BATCH_ADAPTIVE": "false", "BATCH_TIMEOUT_MS": str(timeout_ms)}
    with running_stack(tmp_path, redis_url, env=env) as stack:
        api = api_factory(stack.edge_url)
        task_id = api.submit({"prompt": "alone"})
        with redis.Redis.from_url(redis_url) as r:
            waiting = Keys(stack.prefix).waiting_count
            wait_for(lambda: r.get(waiting) == b"1", 5, "the task in the waiting room")
        [receiver] = stack.of("coordinator")
        stack.start("coordinator")
        stack.wait_alive(1, 2)
        receiver.kill(signal.SIGKILL)
        assert api.wait_terminal(task_id, 30)["status"] == "succeeded"
        delay = flush_delay_ms(stack.store_path, task_id)
        print(f"chaos kill -9 coordinator: batch flushed {delay} ms after submit "
              f"(timeout {timeout_ms} ms)")
        assert timeout_ms <= delay <= timeout_ms * 1.1, delay
        assert rows(stack.store_path, "SELECT reason FROM batches") == [("timer",)]

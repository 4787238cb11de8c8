"""Graceful drain: SIGTERM stops claiming, lets in-flight tasks finish within DRAIN_S, and
hands back at once (lease released, batch re-queued) what it cannot finish."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from harness.processes import running_stack
from shared.keys import Keys
from tests.chaos.conftest import (
    CHAOS_ENV,
    client,
    events,
    final_text,
    running_holder,
    service_named,
    slow,
    task_hash,
)
from tests.client import rows


def test_sigterm_finishes_short_tasks_before_exiting(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    env = {**CHAOS_ENV, "DRAIN_S": "30"}
    with running_stack(tmp_path, redis_url, processors=1, env=env) as stack:
        api = api_factory(stack.edge_url)
        task_id = api.submit(slow(tokens_per_s=20, content_tokens=30))
        holder = service_named(stack, running_holder(stack, task_id))
        holder.kill(signal.SIGTERM)  # waits for the process to exit
        assert holder.proc.returncode == 0
        assert task_hash(stack, task_id)["status"] == "succeeded"
        [(processor,)] = rows(stack.store_path, "SELECT processor FROM tasks")
        assert processor == task_hash(stack, task_id)["processor"]
        assert "draining" in holder.log.read_text()


def test_sigterm_hands_back_what_it_cannot_finish(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    env = {**CHAOS_ENV, "DRAIN_S": "0.5", "LOCK_TTL_MS": "60000"}
    with running_stack(tmp_path, redis_url, processors=2, env=env) as stack:
        api = api_factory(stack.edge_url)
        task_id = api.submit(slow(tokens_per_s=10, content_tokens=60))
        holder_name = running_holder(stack, task_id)
        holder = service_named(stack, holder_name)
        lease = Keys(stack.prefix).lease(task_id)
        with client(stack) as r:
            token = r.get(lease)
        assert token
        stopped_at = time.monotonic()
        holder.kill(signal.SIGTERM)  # waits for the process to exit
        assert holder.proc.returncode == 0
        # A 60 s lease left to expire would still hold the holder's token: it was given back.
        with client(stack) as r:
            assert r.get(lease) != token
        task = api.wait_terminal(task_id, 60)
        print(f"drain hand-off: task finished {time.monotonic() - stopped_at:.1f}s after "
              f"SIGTERM (lease {60000 / 1000:.0f}s)")
        assert task["status"] == "succeeded"
        [(processor, content)] = rows(stack.store_path, "SELECT processor, content FROM tasks")
        assert processor != holder_name
        assert final_text(events(stack, task_id)) == content
        assert "handed_off" in holder.log.read_text()

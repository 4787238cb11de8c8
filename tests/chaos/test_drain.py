"""Graceful drain: SIGTERM stops claiming, lets in-flight tasks finish within DRAIN_S, and
hands back at once (lease released, batch re-queued) what it cannot finish."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from tests.chaos.conftest import CHAOS_ENV, events, final_text, service_named, slow, task_hash
from tests.chaos.test_processor_crash import running_holder
from tests.client import rows
from tests.harness import running_stack


def test_sigterm_finishes_short_tasks_before_exiting(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    env = {**CHAOS_ENV, "DRAIN_S": "30"}
    with running_stack(tmp_path, redis_url, processors=1, env=env) as stack:
        api = api_factory(stack.edge_url)
        task_id = api.submit(slow(tokens_per_s=20, content_tokens=30))
        holder = service_named(stack, running_holder(stack, api, task_id))
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
        holder_name = running_holder(stack, api, task_id)
        holder = service_named(stack, holder_name)
        stopped_at = time.monotonic()
        holder.kill(signal.SIGTERM)
        assert holder.proc.returncode == 0
        task = api.wait_terminal(task_id, 60)
        taken_over_in = time.monotonic() - stopped_at
        # With a 60 s lease, only the hand-off explains a takeover well before it expired.
        print(f"drain hand-off: task finished {taken_over_in:.1f}s after SIGTERM "
              f"(lease {60000 / 1000:.0f}s)")
        assert taken_over_in < 60000 / 1000 / 2
        assert task["status"] == "succeeded"
        [(processor, content)] = rows(stack.store_path, "SELECT processor, content FROM tasks")
        assert processor != holder_name
        assert final_text(events(stack, task_id)) == content
        assert "handed_off" in holder.log.read_text()

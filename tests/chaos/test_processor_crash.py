"""Chaos 1 and 2: a processor killed mid-stream, and one paused past its lease."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from harness.processes import running_stack
from harness.waiting import wait_for
from tests.chaos.conftest import (
    CHAOS_ENV,
    LEASE_MS,
    RECOVERY_LIMIT_S,
    events,
    final_text,
    in_flight,
    mock_records,
    running_holder,
    service_named,
    slow,
    tag_of,
    task_hash,
    terminal_events,
)
from tests.e2e.conftest import rows


def test_kill_9_processor_mid_stream(tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    with running_stack(tmp_path, redis_url, processors=2, env=CHAOS_ENV) as stack:
        api = api_factory(stack.edge_url)
        body = slow()
        task_id = api.submit(body)
        victim = running_holder(stack, task_id)
        killed_at = time.monotonic()
        service_named(stack, victim).kill(signal.SIGKILL)
        task = api.wait_terminal(task_id, RECOVERY_LIMIT_S + 10)
        recovery = time.monotonic() - killed_at
        print(f"chaos kill -9 processor: recovered in {recovery:.2f}s "
              f"(lease {LEASE_MS} ms, limit {RECOVERY_LIMIT_S:.1f}s)")
        assert task["status"] == "succeeded" and task["attempts"] == 2
        [(processor, status, content)] = rows(
            stack.store_path, "SELECT processor, status, content FROM tasks WHERE id = ?",
            task_id)
        assert processor != victim and status == "succeeded"
        evts = events(stack, task_id)
        assert terminal_events(evts) == ["done"]
        assert any(t == "reset" for _e, t, _d in evts)
        assert final_text(evts) == content == task["result"]["content"]
        assert len(mock_records(stack, tag_of(body))) == 2


def test_paused_processor_loses_its_lease_and_writes_nothing(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    with running_stack(tmp_path, redis_url, processors=2, env=CHAOS_ENV) as stack:
        api = api_factory(stack.edge_url)
        body = slow(tokens_per_s=10, content_tokens=30)
        task_id = api.submit(body)
        paused_name = running_holder(stack, task_id)
        paused = service_named(stack, paused_name)
        paused.kill(signal.SIGSTOP)
        try:
            wait_for(lambda: task_hash(stack, task_id).get("processor") not in (None, paused_name),
                     RECOVERY_LIMIT_S, "another processor to take the task over")
            task = api.wait_terminal(task_id, RECOVERY_LIMIT_S + 10)
        finally:
            paused.kill(signal.SIGCONT)
        # Once awake, the paused processor finds its lease gone (its next renewal: the task is
        # finished by then, so an info line, not a lease_lost warning) and ends the task's run:
        # whatever it was going to try, it has tried once it reports no task.
        wait_for(lambda: "lease_ended_task_finished" in paused.log.read_text(),
                 LEASE_MS / 1000 * 3 + 5, "the paused processor to find its lease gone")
        wait_for(lambda: in_flight(stack, paused_name) == 0, LEASE_MS / 1000 * 3 + 5,
                 "the paused processor to end its run of the task")
        assert task["status"] == "succeeded"
        fence = int(task_hash(stack, task_id)["fence"])
        [(processor, row_fence, content)] = rows(
            stack.store_path, "SELECT processor, fence, content FROM tasks WHERE id = ?", task_id)
        assert processor != paused_name and row_fence == fence
        evts = events(stack, task_id)
        assert terminal_events(evts) == ["done"]
        assert final_text(evts) == content


def test_a_stored_result_is_never_sent_to_the_provider_again(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    """The holder died after writing its row but before marking the task done in Redis: the
    task is finished from the row, with no second call to the provider."""
    with running_stack(tmp_path, redis_url, processors=2, env=CHAOS_ENV) as stack:
        api = api_factory(stack.edge_url)
        body = slow(tokens_per_s=10, content_tokens=30)
        task_id = api.submit(body)
        victim_name = running_holder(stack, task_id)
        victim = service_named(stack, victim_name)
        victim.kill(signal.SIGSTOP)
        h = task_hash(stack, task_id)
        # The row the holder wrote just before it died (same shape the processor writes).
        rows(stack.store_path,
             "INSERT INTO tasks (id, tenant, status, model, request, content, "
             "reasoning_content, finish_reason, attempts, fence, created_at, completed_at, "
             "processor) VALUES (?, ?, 'succeeded', ?, ?, 'stored answer', '', 'stop', 1, ?, "
             "?, ?, ?)",
             task_id, h["tenant"], h["model"], h["request"], int(h["fence"]),
             int(h["created_at"]), int(h["created_at"]) + 1, victim_name)
        victim.kill(signal.SIGKILL)
        task = api.wait_terminal(task_id, RECOVERY_LIMIT_S + 10)
        assert task["status"] == "succeeded"
        assert task["result"]["content"] == "stored answer"
        assert len(mock_records(stack, tag_of(body))) == 1
        assert rows(stack.store_path, "SELECT COUNT(*) FROM tasks") == [(1,)]

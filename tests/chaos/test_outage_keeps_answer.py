"""Issue 10: an answer that finished during a Redis outage is kept, not generated again.

Redis is killed while a task streams, and restarted (AOF) after the provider has finished
its answer. The processor keeps the answer in memory, waits for Redis, and then writes it:
one provider call, the stored text equals what clients read, and the event stream tells
clients to drop the deltas they had before the outage."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from harness.processes import RedisServer, running_stack
from harness.waiting import wait_for
from tests.chaos.conftest import (
    events,
    final_text,
    mock_records,
    slow,
    tag_of,
    terminal_events,
)
from tests.client import rows


def test_an_answer_finished_during_a_redis_outage_is_kept(
        tmp_path: Path, own_redis: RedisServer, api_factory: Any) -> None:
    env = {"LOCK_TTL_MS": "30000", "RETRY_BASE_S": "0.05", "HEARTBEAT_S": "0.2"}
    with running_stack(tmp_path, own_redis.url, processors=1, env=env) as stack:
        api = api_factory(stack.edge_url)
        body = slow(tokens_per_s=20, content_tokens=30)  # about 1.7 s of answer
        task_id = api.submit(body)
        wait_for(lambda: any(t == "content" for _e, t, _d in events(stack, task_id)), 30,
                 "the answer to start streaming")
        own_redis.kill(signal.SIGKILL)
        wait_for(lambda: [r for r in mock_records(stack, tag_of(body))
                                     if r.get("outcome") == "completed"], 30,
                            "the provider to finish its answer")
        own_redis.start()
        task = api.wait_terminal(task_id, 60)
        assert task["status"] == "succeeded", task
        assert len(mock_records(stack, tag_of(body))) == 1  # not generated again
        [(content,)] = rows(stack.store_path, "SELECT content FROM tasks WHERE id = ?", task_id)
        evts = events(stack, task_id)
        assert content == task["result"]["content"] == final_text(evts) and content
        assert terminal_events(evts) == ["done"]

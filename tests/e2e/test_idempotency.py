"""Idempotent submit: one key, one task, even after Redis has forgotten the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from harness.processes import running_stack
from shared.keys import Keys
from tests.client import rows


def test_same_key_same_task_and_conflict_on_a_different_body(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    with running_stack(tmp_path, redis_url) as stack:
        api = api_factory(stack.edge_url)
        headers = {"Idempotency-Key": "order-42"}
        first = api.http.post("/api/tasks", json={"prompt": "once"}, headers=headers)
        again = api.http.post("/api/tasks", json={"prompt": "once"}, headers=headers)
        assert first.status_code == again.status_code == 202
        task_id = first.json()["id"]
        assert again.json()["id"] == task_id
        other = api.http.post("/api/tasks", json={"prompt": "twice"}, headers=headers)
        assert other.status_code == 409
        assert other.json()["error"]["code"] == "idempotency_conflict"
        api.wait_terminal(task_id)
        # Redis loses the key (eviction, a restart without persistence): the store remembers.
        with redis.Redis.from_url(redis_url) as r:
            assert r.delete(Keys(stack.prefix).idempotency("public", "order-42")) == 1
        late = api.http.post("/api/tasks", json={"prompt": "once"}, headers=headers)
        assert late.status_code == 202 and late.json()["id"] == task_id
        assert late.json()["status"] == "succeeded"
        assert rows(stack.store_path, "SELECT COUNT(*) FROM tasks") == [(1,)]
        assert rows(stack.store_path, "SELECT task_id FROM idempotency_keys") == [(task_id,)]

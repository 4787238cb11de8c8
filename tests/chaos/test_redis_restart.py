"""Chaos 4: redis-server killed with -9 and restarted on the same data directory."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx

from harness.processes import RedisServer, running_stack
from harness.waiting import wait_for
from tests.chaos.conftest import CHAOS_ENV, slow, streaming_on
from tests.client import rows


def test_every_accepted_task_survives_a_redis_crash(
        tmp_path: Path, own_redis: RedisServer, api_factory: Any) -> None:
    with running_stack(tmp_path, own_redis.url, processors=2, env=CHAOS_ENV) as stack:
        api = api_factory(stack.edge_url)
        ids = [api.submit(slow(tokens_per_s=40, content_tokens=30)) for _ in range(12)]
        streaming = wait_for(lambda: [t for t in ids if streaming_on(stack, t)], 30,
                             "a task to be mid-stream")
        own_redis.kill(signal.SIGKILL)
        print(f"chaos redis kill -9: {len(streaming)} of {len(ids)} tasks were mid-stream")
        r = httpx.post(f"{stack.edge_url}/api/tasks", json={"prompt": "during the outage"},
                       timeout=30)
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] and r.json()["error"]["code"] == "unavailable"
        down_at = time.monotonic()
        own_redis.start()
        ids += [api.submit(slow(tokens_per_s=40, content_tokens=10)) for _ in range(3)]
        for task_id in ids:
            assert api.wait_terminal(task_id, 90)["status"] == "succeeded", task_id
        print(f"chaos redis kill -9: {len(ids)} tasks all succeeded "
              f"{time.monotonic() - down_at:.1f}s after the restart")
        db = stack.store_path
        assert rows(db, "SELECT COUNT(*), COUNT(DISTINCT id) FROM tasks") == [(15, 15)]

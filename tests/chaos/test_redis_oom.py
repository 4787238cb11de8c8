"""Chaos 7: Redis reaches ``maxmemory`` (policy noeviction) under the whole stack.

Intake stops with 503 ``queue_full``; no service exits; tasks already running finish while
Redis is full; once memory is freed, every accepted task finishes with exactly one row and one
provider call (nothing is generated twice).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.chaos.conftest import CHAOS_ENV, mock_records, slow, tag_of, task_hash
from tests.client import rows
from tests.harness import RedisServer, running_stack, wait_for

HEADROOM = 400_000  # bytes above what Redis uses when the fill starts
PAD = "x" * 20_000  # per submitted prompt: the fill takes about 20 submits


def fill(api: httpx.Client, r: redis.Redis) -> tuple[list[str], list[str], httpx.Response]:
    """Submit padded tasks until Redis refuses one; returns (ids, tags, the refusal)."""
    used = int(r.info("memory")["used_memory"])  # type: ignore[index]
    r.config_set("maxmemory", used + HEADROOM)
    ids: list[str] = []
    tags: list[str] = []
    for _ in range(500):
        body = slow(tokens_per_s=40, content_tokens=8)
        body["prompt"] += " " + PAD
        resp = api.post("/api/tasks", json=body)
        if resp.status_code != 202:
            # Pin the limit well below what is used: the refused request's 20 KB query buffer,
            # freed after the refusal, must not let the next write slip in under the limit.
            mem = r.info("memory")
            used = int(mem["used_memory"]) - int(mem["mem_not_counted_for_evict"])  # type: ignore[index]
            r.config_set("maxmemory", max(1, used - HEADROOM // 4))
            return ids, tags, resp
        ids.append(resp.json()["id"])
        tags.append(tag_of(body))
    raise AssertionError(f"Redis never filled up: {len(ids)} submits accepted")


def test_redis_full_stops_intake_but_no_service_and_no_accepted_task(
        tmp_path: Path, own_redis: RedisServer, api_factory: Any) -> None:
    # One slot per processor: the long tasks fill them, so the tasks batched during the fill
    # wait in the batches stream and are claimed (and refused a begin) once Redis is full.
    env = {**CHAOS_ENV, "PROCESSOR_CONCURRENCY": "1"}
    with (running_stack(tmp_path, own_redis.url, processors=2, env=env) as stack,
          redis.Redis.from_url(own_redis.url, decode_responses=True) as r):
        api = api_factory(stack.edge_url)
        # In flight when Redis fills: one long answer per processor, begun before the fill
        # (one at a time, so the second goes to the processor that still has room).
        long_bodies = [slow(tokens_per_s=10, content_tokens=80) for _ in range(2)]
        running: list[str] = []
        for body in long_bodies:
            running.append(task_id := api.submit(body))
            wait_for(lambda t=task_id: task_hash(stack, t).get("status") == "running", 30,
                     "a long task to run")

        queued, tags, refused = fill(api.http, r)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "queue_full"
        assert int(refused.headers["Retry-After"]) >= 1
        health = api.http.get("/api/health").json()
        assert health["status"] == "degraded" and health["redis_memory"]["state"] == "full"
        assert all(task_hash(stack, t)["status"] == "running" for t in running)
        cancel = api.http.delete(f"/api/tasks/{queued[-1]}")
        assert cancel.status_code == 503 and cancel.json()["error"]["code"] == "queue_full"

        # The pipeline waits the full Redis out instead of dying, and says why.
        wait_for(lambda: stack.logged("coordinator", "redis_oom"), 30, "coordinator redis_oom")
        # Work in flight finishes while Redis is still full.
        for task_id in running:
            assert api.wait_terminal(task_id, 60)["status"] == "succeeded", task_id
        assert int(r.info("memory")["used_memory"]) > int(r.config_get("maxmemory")["maxmemory"])
        wait_for(lambda: stack.logged("processor", "redis_oom"), 30, "processor redis_oom")
        assert not stack.logged("processor", "redis_unavailable")
        assert not stack.logged("coordinator", "redis_unavailable")
        dead = [s.name for s in stack.services if not s.alive]
        assert not dead, f"exited under OOM: {dead}\n{stack.logs()}"

        freed_at = time.monotonic()
        r.config_set("maxmemory", 0)
        accepted = running + queued
        for task_id in accepted:
            assert api.wait_terminal(task_id, 90)["status"] == "succeeded", task_id
        print(f"chaos redis oom: {len(queued)} submits filled {HEADROOM} bytes; all "
              f"{len(accepted)} accepted tasks succeeded {time.monotonic() - freed_at:.1f}s "
              f"after memory was freed")
        marks = ",".join("?" * len(accepted))
        assert rows(stack.store_path,
                    f"SELECT COUNT(*), COUNT(DISTINCT id) FROM tasks WHERE id IN ({marks})",
                    *accepted) == [(len(accepted), len(accepted))]
        for tag in tags + [tag_of(b) for b in long_bodies]:
            assert len(mock_records(stack, tag)) == 1, tag  # generated once, never again
        assert api.submit({"prompt": "after"})
        assert all(s.alive for s in stack.services), stack.logs()

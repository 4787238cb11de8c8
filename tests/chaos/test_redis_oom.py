"""Chaos 7: Redis reaches ``maxmemory`` (policy noeviction) under the whole stack.

Intake stops with 503 ``queue_full``; no service exits; tasks already running finish while
Redis is full; once memory is freed, every accepted task finishes with exactly one row and one
provider call (nothing is generated twice).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from harness.processes import RedisServer, running_stack
from harness.waiting import wait_for
from shared.keys import Keys
from shared.timeutil import now_ms
from tests.chaos.conftest import CHAOS_ENV, mock_records, slow, tag_of, task_hash
from tests.client import rows

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
            # Pin the limit far below what is used: Redis shrinks the clients' query buffers
            # of the fill (20 KB each) when they idle, which must not let writes in again.
            used = int(r.info("memory")["used_memory"])  # type: ignore[index]
            r.config_set("maxmemory", used // 2)
            return ids, tags, resp
        ids.append(resp.json()["id"])
        tags.append(tag_of(body))
    raise AssertionError(f"Redis never filled up: {len(ids)} submits accepted")


def test_redis_full_stops_intake_but_no_service_and_no_accepted_task(
        tmp_path: Path, own_redis: RedisServer, api_factory: Any) -> None:
    # One slot per processor: the long tasks fill them, so a batch the timer flushes meanwhile
    # (with no room, only the timer sends one) waits in the batches stream, to be claimed (and
    # refused a begin) once Redis is full.
    env = {**CHAOS_ENV, "PROCESSOR_CONCURRENCY": "1", "BATCH_SIZE": "3",
           "BATCH_TIMEOUT_MS": "300"}
    with (running_stack(tmp_path, own_redis.url, processors=2, env=env) as stack,
          redis.Redis.from_url(own_redis.url, decode_responses=True) as r):
        api = api_factory(stack.edge_url)
        # In flight when Redis fills: one long answer per processor, begun before the fill
        # (one at a time, so the second goes to the processor that still has room).
        bodies = [slow(tokens_per_s=10, content_tokens=80) for _ in range(2)]
        running: list[str] = []
        for body in bodies:
            running.append(task_id := api.submit(body))
            wait_for(lambda t=task_id: task_hash(stack, t).get("status") == "running", 30,
                     "a long task to run")
        waiting_bodies = [slow(tokens_per_s=40, content_tokens=8) for _ in range(3)]
        waiting = [api.submit(b) for b in waiting_bodies]
        bodies += waiting_bodies
        wait_for(lambda: all(task_hash(stack, t)["status"] == "batched" for t in waiting), 30,
                 "a batch waiting for a processor")

        # The coordinator is paused while Redis fills, so it has tasks to place once it is full.
        [coordinator] = stack.of("coordinator")
        coordinator.kill(signal.SIGSTOP)
        try:
            queued, tags, refused = fill(api.http, r)
        finally:
            coordinator.kill(signal.SIGCONT)
        full_at = now_ms()
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "queue_full"
        assert int(refused.headers["Retry-After"]) >= 1
        health = api.http.get("/api/health").json()
        assert health["status"] == "degraded" and health["redis_memory"]["state"] == "full"
        assert all(task_hash(stack, t)["status"] == "running" for t in running)
        cancel = api.http.delete(f"/api/tasks/{queued[-1]}")
        assert cancel.status_code == 503 and cancel.json()["error"]["code"] == "queue_full"

        # The pipeline waits the full Redis out instead of dying, and says why...
        wait_for(lambda: stack.logged("coordinator", "redis_oom"), 30, "coordinator redis_oom")
        # ...while work in flight finishes; then the waiting batch is claimed and must wait.
        for task_id in running:
            assert api.wait_terminal(task_id, 60)["status"] == "succeeded", task_id
        wait_for(lambda: stack.logged("processor", "redis_oom", loop="task"), 30,
                 "a processor to wait for room to begin a task")
        assert int(r.info("memory")["used_memory"]) > int(r.config_get("maxmemory")["maxmemory"])
        assert all(task_hash(stack, t)["status"] == "batched" for t in waiting)
        # Waiting is not dying: every heartbeat goes on (its expiry is 3 beats ahead).
        keys = Keys(stack.prefix)
        wait_for(lambda: all(min(s for _m, s in r.zrange(z, 0, -1, withscores=True)) > full_at
                             + 1000 for z in (keys.coordinators_alive, keys.processors_alive)),
                 30, "heartbeats written while Redis is full")
        for module in ("coordinator", "processor"):
            assert not stack.logged(module, "redis_unavailable"), module
        dead = [s.name for s in stack.services if not s.alive]
        assert not dead, f"exited under OOM: {dead}\n{stack.logs()}"

        freed_at = time.monotonic()
        r.config_set("maxmemory", 0)
        accepted = running + waiting + queued
        for task_id in accepted:
            assert api.wait_terminal(task_id, 90)["status"] == "succeeded", task_id
        print(f"chaos redis oom: {len(queued)} submits filled {HEADROOM} bytes; all "
              f"{len(accepted)} accepted tasks succeeded {time.monotonic() - freed_at:.1f}s "
              f"after memory was freed")
        marks = ",".join("?" * len(accepted))
        assert rows(stack.store_path,
                    f"SELECT COUNT(*), COUNT(DISTINCT id) FROM tasks WHERE id IN ({marks})",
                    *accepted) == [(len(accepted), len(accepted))]
        for tag in tags + [tag_of(b) for b in bodies]:
            assert len(mock_records(stack, tag)) == 1, tag  # generated once, never again
        assert api.submit({"prompt": "after"})
        assert all(s.alive for s in stack.services), stack.logs()

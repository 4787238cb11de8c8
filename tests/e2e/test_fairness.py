"""Fair shares and priorities with real processes, when the provider's capacity is scarce:
a tenant's few tasks are not stuck behind another tenant's burst, and a task's priority
decides its place in its tenant's line without starving the low ones."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.harness import Stack, running_stack, wait_for

KEYS = "key-a:tenant-a,key-b:tenant-b"
TASK_S = 1.0  # each call: 1 s to the first token, then a few fast tokens


def env(capacity: int) -> dict[str, str]:
    return {"EDGE_API_KEYS": KEYS, "PROVIDER_MAX_CONCURRENCY": str(capacity),
            "MOCKAI_TTFT_MS": str(int(TASK_S * 1000)), "MOCKAI_REASONING_TOKENS": "0",
            "MOCKAI_CONTENT_TOKENS": "3", "MOCKAI_TOKENS_PER_S": "1000"}


def body(tag: str, **extra: Any) -> dict[str, Any]:
    return {"prompt": f"fair {uuid.uuid4().hex[:8]}", "metadata": {"mock": {"tag": tag}},
            **extra}


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def calls(stack: Stack, tag: str) -> list[dict[str, Any]]:
    """The provider's calls of one tag, in the order they started."""
    found = httpx.get(f"{stack.mock_url}/mock/requests", params={"tag": tag}).json()["requests"]
    return sorted(found, key=lambda c: c["started_monotonic"])


def test_a_tenants_few_tasks_are_not_stuck_behind_another_tenants_burst(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    """Capacity 4: tenant A submits 100 tasks, then tenant B submits 3. In first come, first
    served order B would wait for A's 100 (25 task durations); with fair shares each of B's
    tasks takes the next free slot, so it is done within two task durations of its submit."""
    with running_stack(tmp_path, redis_url, env=env(4)) as stack:
        a, b = api_factory(stack.edge_url, "key-a"), api_factory(stack.edge_url, "key-b")
        tag = uuid.uuid4().hex[:8]
        with ThreadPoolExecutor(8) as pool:
            burst = list(pool.map(lambda _i: a.submit(body(tag)), range(100)))
        wait_for(lambda: len(calls(stack, tag)) >= 4, 20, "A's first calls")
        few = [b.submit(body(tag)) for _ in range(3)]
        done = [b.wait_terminal(t, 30) for t in few]
        assert [t["status"] for t in done] == ["succeeded"] * 3
        # How long one task takes here, from A's tasks that are done by now.
        durations = sorted(seconds(t["completed_at"]) - seconds(t["started_at"])
                           for t in (a.get(x) for x in burst[:8]) if t["status"] == "succeeded")
        task_s = durations[len(durations) // 2]
        waits = [seconds(t["completed_at"]) - seconds(t["created_at"]) for t in done]
        print(f"fairness: B's 3 tasks done {[round(w, 2) for w in waits]} s after submit; "
              f"one task takes {task_s:.2f} s; A has "
              f"{sum(a.get(x)['status'] != 'succeeded' for x in burst)} of 100 left")
        assert max(waits) <= 2 * task_s, (waits, task_s)
        assert sum(a.get(x)["status"] == "succeeded" for x in burst) < 50  # A's burst is real


def test_priority_goes_first_within_a_tenant_and_a_low_one_still_runs(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    """Capacity 1 and a backlog: a task of priority -10 starts before the tasks of priority 0
    queued before it (those not yet started), and a task of priority 10 still finishes."""
    with running_stack(tmp_path, redis_url,
                       env={**env(1), "EDGE_API_KEYS": "", "MOCKAI_TTFT_MS": "300"}) as stack:
        api = api_factory(stack.edge_url)
        tag = uuid.uuid4().hex[:8]
        backlog = [api.submit(body(tag)) for _ in range(6)]
        low = api.submit(body(tag, priority=10))
        urgent = api.submit(body(tag, priority=-10))
        wait_for(lambda: api.get(urgent).get("started_at"), 20, "the urgent task to start")
        started_before = {t for t in backlog if api.get(t).get("started_at")}
        waiting = [api.get(t) for t in backlog if t not in started_before]
        assert len(waiting) >= 3, "the backlog was gone before the urgent task came"
        done = [api.wait_terminal(t, 30) for t in [*backlog, low, urgent]]
        assert {t["status"] for t in done} == {"succeeded"}
        start = {t["id"]: seconds(t["started_at"]) for t in done}
        assert all(start[urgent] < start[t["id"]] for t in waiting)
        # The low one went last: behind every priority-0 task, but it ran.
        assert start[low] == max(start.values())
        assert len(calls(stack, tag)) == 8

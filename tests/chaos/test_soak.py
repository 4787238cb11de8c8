"""Chaos 6: 500 tasks while a random service (edge, coordinator, processor or Redis) is killed
with -9 and restarted every few seconds. A checker then reads the store and the event streams
and counts lost, duplicated and unexpected results: all must be zero."""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from harness.processes import RedisServer, Stack, running_stack
from harness.waiting import wait_for
from tests.chaos.conftest import CHAOS_ENV, events, final_text, terminal_events
from tests.client import rows

TASKS = 500
KILL_EVERY_S = (2.0, 4.0)
SUBMIT_PAUSE_S = 0.4  # 8 submitters: the 500 tasks arrive over about 25 s of chaos


def submit_until_accepted(stack: Stack, n: int) -> str:
    """Submit with an Idempotency-Key, retrying through outages: a retry after a lost answer
    returns the same task, never a second one."""
    key = f"soak-{n}-{uuid.uuid4().hex[:8]}"
    body = {"prompt": f"soak {n}", "metadata": {"mock": {"tokens_per_s": 300,
                                                          "content_tokens": 15}}}

    def accepted() -> str | None:  # an error (the edge is down) is "not yet"
        r = httpx.post(f"{stack.edge_url}/api/tasks", json=body, timeout=10,
                       headers={"Idempotency-Key": key})
        return str(r.json()["id"]) if r.status_code == 202 else None
    task_id = wait_for(accepted, 120, f"task {n} to be accepted", interval=0.2)
    time.sleep(SUBMIT_PAUSE_S)  # pacing the submitters, not waiting on anything
    return task_id


class Chaos(threading.Thread):
    def __init__(self, stack: Stack, redis: RedisServer, seed: int = 7) -> None:
        super().__init__(daemon=True)
        self.stack, self.redis, self.rng = stack, redis, random.Random(seed)
        self.stopping = threading.Event()
        self.round_done = threading.Event()
        self.restarts: Counter[str] = Counter()
        self.recovery_s: list[float] = []

    def run(self) -> None:
        order: list[str] = []
        while not self.stopping.wait(self.rng.uniform(*KILL_EVERY_S)):
            if not order:  # every kind of service in each round, in a random order
                order = ["edge", "coordinator", "processor", "redis"]
                self.rng.shuffle(order)
            target = order.pop()
            if not order:
                self.round_done.set()
            started = time.monotonic()
            if target == "redis":
                self.redis.kill(signal.SIGKILL)
                self.redis.start()
            else:
                victim = self.rng.choice(self.stack.of(target))
                victim.kill(signal.SIGKILL)
                self.stack.start(target)
            self.restarts[target] += 1
            try:
                wait_for(lambda: httpx.get(f"{self.stack.edge_url}/api/health",
                                           timeout=2).status_code == 200, 30, "health")
            except AssertionError:
                continue
            self.recovery_s.append(time.monotonic() - started)


def test_soak_with_random_kills(tmp_path: Path, own_redis: RedisServer) -> None:
    with running_stack(tmp_path, own_redis.url, processors=2, coordinators=2,
                       env={**CHAOS_ENV, "PROCESSOR_CONCURRENCY": "16"}) as stack:
        chaos = Chaos(stack, own_redis)
        chaos.start()
        try:
            with ThreadPoolExecutor(8) as pool:
                accepted = list(pool.map(lambda n: submit_until_accepted(stack, n),
                                         range(TASKS)))
            chaos.round_done.wait(60)  # every kind of service killed at least once
        finally:
            chaos.stopping.set()
            chaos.join()
        report = check(stack, accepted)
        print(f"soak: tasks={TASKS} accepted={len(set(accepted))} lost={report['lost']} "
              f"duplicated={report['duplicated']} unexpected={report['unexpected']} "
              f"restarts={dict(chaos.restarts)} recovery_s(max/mean)="
              f"{max(chaos.recovery_s, default=0):.2f}/"
              f"{sum(chaos.recovery_s) / max(1, len(chaos.recovery_s)):.2f} "
              f"event_mismatches={report['event_mismatches']}")
        assert len(chaos.restarts) == 4, chaos.restarts  # each kind was killed at least once
        assert report == {"lost": 0, "duplicated": 0, "unexpected": 0,
                          "event_mismatches": 0, "not_succeeded": 0}


def check(stack: Stack, accepted: list[str]) -> dict[str, int]:
    ids = set(accepted)
    api = httpx.Client(base_url=stack.edge_url, timeout=10)

    def finished() -> bool:
        statuses = [api.get(f"/api/tasks/{t}").json().get("status") for t in ids]
        return all(s in ("succeeded", "failed", "cancelled") for s in statuses)

    try:
        wait_for(finished, 240, "every accepted task to finish", interval=1.0)
    except AssertionError:
        pass  # counted as lost below
    stored = rows(stack.store_path, "SELECT id, status, content FROM tasks")
    per_id = Counter(i for i, _s, _c in stored)
    content = {i: c for i, _s, c in stored}
    mismatches = 0
    for task_id in ids:
        evts = events(stack, task_id)
        if terminal_events(evts) != ["done"] or final_text(evts) != content.get(task_id):
            mismatches += 1
            print(f"event mismatch {task_id}: {[t for _e, t, _d in evts]} "
                  f"stream={final_text(evts)!r} stored={content.get(task_id)!r}")
    not_succeeded = sum(1 for i, s, _c in stored if i in ids and s != "succeeded")
    api.close()
    return {"lost": len(ids - set(per_id)), "duplicated": sum(n - 1 for n in per_id.values()),
            "unexpected": len(set(per_id) - ids), "event_mismatches": mismatches,
            "not_succeeded": not_succeeded}

"""Per-tenant limits, enforced in the one atomic submit step (shared/lua/submit.lua): 429 with
Retry-After for submissions per minute and for tasks queued or running at once."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import redis

from harness.processes import running_stack
from harness.waiting import wait_for
from shared.keys import Keys
from shared.timeutil import now_ms

# The store plays no part of its own here: on the first store only (tests/conftest.py).
pytestmark = pytest.mark.first_store_only

KEY_A, KEY_B = "sk-limits-alpha-8d1e", "sk-limits-beta-2f7a"
KEYS = f"{KEY_A}:alpha,{KEY_B}:beta"
WINDOW_MS = 60_000
STALL = {"mock": {"fault": {"stall_after": 1, "stall_s": 600, "key": "limits-stall"}}}


def task_keys(r: redis.Redis, prefix: str) -> set[str]:
    return set(r.scan_iter(match=Keys(prefix).task("*")))


def test_rate_per_minute_answers_429_until_the_window_resets(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    rate = 3
    env = {"EDGE_API_KEYS": KEYS, "TENANT_RATE_PER_MINUTE": str(rate)}
    with running_stack(tmp_path, redis_url, processors=0, env=env) as stack:
        alpha, beta = api_factory(stack.edge_url, KEY_A), api_factory(stack.edge_url, KEY_B)
        r_ = redis.Redis.from_url(redis_url, decode_responses=True)
        # Every request below falls in one fixed window (the edge's clock is this one): start
        # with 10 s of it left, far more than these few requests take.
        wait_for(lambda: WINDOW_MS - now_ms() % WINDOW_MS > 10_000, 11,
                 "a rate window with 10 s left")
        window = now_ms() // WINDOW_MS
        for _ in range(rate):
            r = alpha.http.post("/api/tasks", json={"prompt": "count me"})
            assert r.status_code == 202, r.text
        left_before_s = (WINDOW_MS - now_ms() % WINDOW_MS) / 1000
        refused = alpha.http.post("/api/tasks", json={"prompt": "one too many"})
        left_after_s = (WINDOW_MS - now_ms() % WINDOW_MS) / 1000
        assert refused.status_code == 429, refused.text
        body = refused.json()["error"]
        assert body["code"] == "rate_limited" and KEY_A not in refused.text
        # Retry-After: the seconds left in the window when the edge refused, rounded up.
        assert math.floor(left_after_s) <= int(refused.headers["Retry-After"]) <= math.ceil(
            left_before_s)
        # The refused request left nothing behind, and the other tenant has its own budget.
        assert len(task_keys(r_, stack.prefix)) == rate
        assert beta.http.post("/api/tasks", json={"prompt": "mine"}).status_code == 202
        # OpenAI's route shares the budget and answers in OpenAI's shape.
        r = alpha.http.post("/v1/chat/completions",
                            json={"messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 429, r.text
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert 1 <= int(r.headers["Retry-After"]) <= math.ceil(left_before_s)
        assert now_ms() // WINDOW_MS == window, "the test outlasted its window"


def test_active_cap_answers_429_and_frees_on_immediate_cancel(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    env = {"EDGE_API_KEYS": KEYS, "TENANT_MAX_ACTIVE": "2"}
    with running_stack(tmp_path, redis_url, processors=0, env=env) as stack:
        alpha, beta = api_factory(stack.edge_url, KEY_A), api_factory(stack.edge_url, KEY_B)
        r_ = redis.Redis.from_url(redis_url, decode_responses=True)
        first, _second = alpha.submit(), alpha.submit()  # no processor: they stay queued
        r = alpha.http.post("/api/tasks", json={"prompt": "one too many"})
        assert r.status_code == 429, r.text
        assert r.headers["Retry-After"] == "1"
        assert r.json()["error"]["code"] == "too_many_active_tasks"
        assert len(task_keys(r_, stack.prefix)) == 2
        r = alpha.http.post("/v1/chat/completions",
                            json={"messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        assert beta.http.post("/api/tasks", json={"prompt": "mine"}).status_code == 202
        # Cancelling a queued task ends it at once and frees its slot.
        assert alpha.http.delete(f"/api/tasks/{first}").status_code == 200
        alpha.submit()
        assert alpha.http.post("/api/tasks", json={"prompt": "x"}).status_code == 429


def test_stale_members_do_not_block_a_tenant(tmp_path: Path, redis_url: str,
                                             api_factory: Any) -> None:
    """A task whose hash expired without ever finishing stays in the active set: it is
    dropped once older than TASK_TTL_S, as the task it stands for is gone by then."""
    ttl_s = 60
    env = {"EDGE_API_KEYS": KEYS, "TENANT_MAX_ACTIVE": "2", "TASK_TTL_S": str(ttl_s)}
    with running_stack(tmp_path, redis_url, processors=0, env=env) as stack:
        alpha = api_factory(stack.edge_url, KEY_A)
        r_ = redis.Redis.from_url(redis_url, decode_responses=True)
        active = Keys(stack.prefix).tenant_active("alpha")
        old = now_ms() - ttl_s * 1000 - 1000
        r_.zadd(active, {"tsk_expired_1": old, "tsk_expired_2": old})
        alpha.submit()
        alpha.submit()
        assert r_.zscore(active, "tsk_expired_1") is None
        assert r_.zcard(active) == 2
        assert alpha.http.post("/api/tasks", json={"prompt": "x"}).status_code == 429
        # Fresh members count: the cap is about tasks that may still run.
        r_.delete(active)
        r_.zadd(active, {"tsk_recent_1": now_ms(), "tsk_recent_2": now_ms()})
        assert alpha.http.post("/api/tasks", json={"prompt": "x"}).status_code == 429


def test_finished_and_cancelled_running_tasks_free_their_slots(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    env = {"EDGE_API_KEYS": KEYS, "TENANT_MAX_ACTIVE": "2"}
    with running_stack(tmp_path, redis_url, processors=1, env=env) as stack:
        alpha = api_factory(stack.edge_url, KEY_A)
        r_ = redis.Redis.from_url(redis_url, decode_responses=True)
        active = Keys(stack.prefix).tenant_active("alpha")
        for _ in range(3):  # more tasks than slots, one after another: each end frees its slot
            assert alpha.wait_terminal(alpha.submit())["status"] == "succeeded"
        assert r_.zcard(active) == 0
        stalled = [alpha.submit({"prompt": f"stall {i}", "metadata": STALL}) for i in range(2)]
        for task_id in stalled:
            wait_for(lambda t=task_id: alpha.get(t)["status"] == "running", 30, "running")
        assert alpha.http.post("/api/tasks", json={"prompt": "x"}).status_code == 429
        # A running task's cancel is done by its processor, through complete.lua.
        assert alpha.http.delete(f"/api/tasks/{stalled[0]}").status_code == 202
        assert alpha.wait_terminal(stalled[0])["status"] == "cancelled"
        assert r_.zscore(active, stalled[0]) is None
        late = alpha.submit({"prompt": "now there is room"})
        assert alpha.http.delete(f"/api/tasks/{stalled[1]}").status_code == 202
        assert alpha.wait_terminal(late)["status"] == "succeeded"
        assert alpha.wait_terminal(stalled[1])["status"] == "cancelled"
        wait_for(lambda: r_.zcard(active) == 0, 10, "the active set to empty")

"""Chaos 5: a provider that rate-limits, fails, breaks streams, stalls, and refuses our key."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import httpx
import pytest

from harness.processes import Stack, running_stack
from tests.chaos.conftest import CHAOS_ENV, events, final_text, mock_records, slow, tag_of


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Any:
    # The module's faults, one test after another, open the provider's breaker (5 failures
    # in a row), and each failed call after that is a failed probe that doubles its cool-down:
    # at the default 5 s, the dead-letter test sat out 5 + 10 + 20 s of it (36 s of 38).
    # The breaker is not what these tests are about; its own tests are in tests/integration.
    env = {**CHAOS_ENV, "MAX_ATTEMPTS": "3", "BREAKER_COOLDOWN_S": "0.1"}
    with running_stack(tmp_path_factory.mktemp("faults"), redis_url, env=env) as s:
        yield s


def faulty(fault: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return slow(tokens_per_s=0, content_tokens=12, fault={"key": uuid.uuid4().hex, **fault},
                **kw)


def run(stack: Stack, api: Any, body: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    task = api.wait_terminal(api.submit(body), 60)
    return task, mock_records(stack, tag_of(body))


def test_429_with_retry_after_is_honoured(stack: Stack, api_factory: Any) -> None:
    api = api_factory(stack.edge_url)
    task, calls = run(stack, api, faulty({"status": 429, "retry_after": "1", "times": 2}))
    # A rate limit is a wait, not a failure: the refused calls are not attempts.
    assert task["status"] == "succeeded" and task["attempts"] == 1
    assert [c["status"] for c in calls] == [429, 429, 200]
    gaps = [b["started_at"] - a["started_at"] for a, b in itertools.pairwise(calls)]
    assert all(g >= 0.95 for g in gaps), gaps  # waited as told, not the 50 ms backoff


def test_503_burst_then_success(stack: Stack, api_factory: Any) -> None:
    api = api_factory(stack.edge_url)
    task, calls = run(stack, api, faulty({"status": 503, "times": 2}))
    assert task["status"] == "succeeded" and task["attempts"] == 3 and len(calls) == 3


def test_stream_cut_midway_is_retried_from_the_start(stack: Stack, api_factory: Any) -> None:
    api = api_factory(stack.edge_url)
    task, calls = run(stack, api, faulty({"cut_after": 4, "times": 1}))
    assert task["status"] == "succeeded" and task["attempts"] == 2
    assert [c["outcome"] for c in calls] == ["cut", "completed"]
    evts = events(stack, task["id"])
    assert [t for _e, t, _d in evts].count("reset") == 1
    assert final_text(evts) == task["result"]["content"] == calls[-1]["content"]


def test_a_stalled_stream_hits_the_idle_timeout(stack: Stack, api_factory: Any) -> None:
    api = api_factory(stack.edge_url)
    task, calls = run(stack, api, faulty({"stall_after": 3, "stall_s": 60, "times": 1}))
    assert task["status"] == "succeeded" and task["attempts"] == 2
    assert calls[0]["outcome"] in ("disconnected", "in_progress")


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 422])
def test_client_errors_fail_at_once(stack: Stack, api_factory: Any, status: int) -> None:
    api = api_factory(stack.edge_url)
    message = f"provider says no {uuid.uuid4().hex[:6]}"
    task, calls = run(stack, api, faulty({"status": status, "message": message}))
    assert task["status"] == "failed" and task["attempts"] == 1 and len(calls) == 1
    assert task["error"]["status"] == status and task["error"]["message"] == message


def test_exhausted_retries_dead_letter_then_retry(stack: Stack, api_factory: Any) -> None:
    api = api_factory(stack.edge_url)
    body = faulty({"status": 500, "times": 3})
    task, calls = run(stack, api, body)
    assert task["status"] == "failed" and task["attempts"] == 3 and len(calls) == 3
    dead = httpx.get(f"{stack.edge_url}/api/dead-letters").json()["data"]
    assert task["id"] in [d["id"] for d in dead]
    r = httpx.post(f"{stack.edge_url}/api/tasks/{task['id']}/retry")
    assert r.status_code == 202, r.text
    again = api.wait_terminal(task["id"], 60)
    assert again["status"] == "succeeded" and again["attempts"] == 1
    dead = httpx.get(f"{stack.edge_url}/api/dead-letters").json()["data"]
    assert task["id"] not in [d["id"] for d in dead]
    assert httpx.post(f"{stack.edge_url}/api/tasks/{task['id']}/retry").status_code == 409
    assert final_text(events(stack, task["id"])) == again["result"]["content"]

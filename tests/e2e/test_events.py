"""GET /api/tasks/{id}/events: live deltas as Server-Sent Events, resumable with Last-Event-ID,
replayed from the start for late clients, and served from the store once Redis forgot the task."""

from __future__ import annotations

import signal
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from harness.processes import Stack, json_lines, running_stack
from harness.waiting import wait_for
from shared.keys import Keys
from tests.e2e.conftest import rows
from tests.e2e.sse_client import TERMINAL, Comment, Sse, deltas, open_events, parse, read_all


def slow(content_tokens: int = 60, tokens_per_s: float = 40, **extra: Any) -> dict[str, Any]:
    return {"prompt": f"slow {uuid.uuid4().hex}",
            "metadata": {"mock": {"tokens_per_s": tokens_per_s, "content_tokens": content_tokens,
                                  "reasoning_tokens": 5, **extra}}}


def assert_edge_logged_no_errors(stack: Stack) -> None:
    [edge] = stack.of("edge")
    text = edge.log.read_text()
    errors = [line for line in json_lines(text) if line.get("level") == "error"]
    assert not errors and "Traceback" not in text, edge.tail(50)


def test_a_client_that_reconnects_with_last_event_id_misses_nothing_and_repeats_nothing(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    with running_stack(tmp_path, redis_url) as stack:
        api = api_factory(stack.edge_url)
        task_id = api.submit(slow())
        first: list[Sse] = []
        with open_events(api.http, task_id) as r:
            assert r.status_code == 200
            for e in parse(r.iter_lines()):
                if isinstance(e, Sse):
                    first.append(e)
                if sum(x.event == "content" for x in first) == 5:
                    break  # hang up mid-answer
        assert not any(e.event in TERMINAL for e in first), "the client left before the end"
        rest = read_all(api.http, task_id, last_id=first[-1].id)
        task = api.wait_terminal(task_id)
        assert task["status"] == "succeeded"
        events = first + rest
        ids = [e.id for e in events]
        assert len(ids) == len(set(ids)), "an event was delivered twice"
        assert deltas(events, "content") == task["result"]["content"]
        assert deltas(events, "reasoning") == task["result"]["reasoning_content"]
        assert [e.event for e in events].count("done") == 1 and events[-1].event == "done"
        assert events[-1].json() == task
        # The same resumption later, from a feed that starts afresh, gives the same events.
        assert read_all(api.http, task_id, last_id=first[-1].id) == rest
        assert_edge_logged_no_errors(stack)


def test_a_client_that_hangs_up_is_let_go_while_its_task_runs_on(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    with running_stack(tmp_path, redis_url) as stack:
        api = api_factory(stack.edge_url)
        task_id = api.submit(slow(content_tokens=400, tokens_per_s=10))
        with open_events(api.http, task_id) as r:
            for e in parse(r.iter_lines()):
                if isinstance(e, Sse) and e.event == "content":
                    break
        [edge] = stack.of("edge")
        wait_for(lambda: f"/api/tasks/{task_id}/events" in edge.log.read_text(), 20,
                 "the event stream's handler to end")
        assert api.get(task_id)["status"] == "running", "the handler outlived its client"
        assert api.http.delete(f"/api/tasks/{task_id}").status_code == 202
        assert api.wait_terminal(task_id)["status"] == "cancelled"
        assert_edge_logged_no_errors(stack)


def test_a_late_client_gets_everything_from_the_start(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    with running_stack(tmp_path, redis_url) as stack:
        api = api_factory(stack.edge_url)
        task_id = api.submit({"prompt": "late"})
        task = api.wait_terminal(task_id)
        events = read_all(api.http, task_id)
        assert events[0].event == "status" and events[0].json() == {"status": "queued"}
        statuses = [e.json()["status"] for e in events if e.event == "status"]
        assert statuses[-1] == "running"
        assert deltas(events, "content") == task["result"]["content"] != ""
        assert deltas(events, "reasoning") == task["result"]["reasoning_content"] != ""
        assert events[-1].event == "done" and events[-1].json() == task
        assert all(e.id for e in events)
        # Whoever holds the terminal event is told there is nothing more (EventSource stops).
        with open_events(api.http, task_id, events[-1].id) as r:
            assert r.status_code == 204


def test_several_clients_of_one_task_see_the_same_events(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    with running_stack(tmp_path, redis_url) as stack:
        api = api_factory(stack.edge_url)
        task_id = api.submit(slow(content_tokens=30))
        with ThreadPoolExecutor(6) as pool:
            seen = list(pool.map(lambda _: read_all(api.http, task_id), range(6)))
        task = api.get(task_id)
        assert all(s == seen[0] for s in seen)
        assert deltas(seen[0], "content") == task["result"]["content"]


def test_more_watched_tasks_than_reader_connections_only_wait_their_turn(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    with running_stack(tmp_path, redis_url, env={"EDGE_STREAM_READERS": "1"}) as stack:
        api = api_factory(stack.edge_url)
        ids = [api.submit(slow(content_tokens=20)) for _ in range(3)]
        with ThreadPoolExecutor(6) as pool:
            seen = list(pool.map(lambda t: (t, read_all(api.http, t)), ids + ids))
        for task_id, events in seen:
            assert deltas(events, "content") == api.get(task_id)["result"]["content"]
        r = api.http.post("/api/tasks", json={"prompt": "the main pool is untouched"})
        assert r.status_code == 202


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_once_redis_forgot_the_task_the_store_answers_with_one_terminal_event(
        tmp_path: Path, redis_url: str, api_factory: Any, outcome: str) -> None:
    with running_stack(tmp_path, redis_url) as stack:
        api = api_factory(stack.edge_url)
        body: dict[str, Any] = {"prompt": "remember me"}
        if outcome == "failed":  # a 400 from the provider is final: no retries
            body["metadata"] = {"mock": {"fault": {"status": 400}}}
        task_id = api.submit(body)
        assert api.wait_terminal(task_id)["status"] == outcome
        keys, r = Keys(stack.prefix), redis.Redis.from_url(redis_url)
        assert r.delete(keys.events(task_id), keys.task(task_id)) == 2  # what expiry does
        stored = api.get(task_id)
        [(status,)] = rows(stack.store_path, "SELECT status FROM tasks WHERE id = ?", task_id)
        assert stored["status"] == status == outcome
        [event] = read_all(api.http, task_id)
        assert event.event == {"succeeded": "done", "failed": "error"}[outcome]
        assert event.json() == stored
        if outcome == "succeeded":
            assert event.json()["result"]["content"]
        else:
            assert event.json()["error"]["code"]
        with open_events(api.http, task_id, event.id) as resp:
            assert resp.status_code == 204


def test_idle_streams_get_keep_alive_comments(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    with running_stack(tmp_path, redis_url, env={"SSE_KEEPALIVE_S": "0.2"}) as stack:
        api = api_factory(stack.edge_url)
        task_id = api.submit({"prompt": "wait for it",
                              "metadata": {"mock": {"ttft_ms": 1500, "content_tokens": 3}}})
        with open_events(api.http, task_id) as r:
            items = list(parse(r.iter_lines()))
        first_delta = next(i for i, e in enumerate(items)
                           if isinstance(e, Sse) and e.event == "reasoning")
        assert any(isinstance(e, Comment) for e in items[:first_delta])
        assert isinstance(items[-1], Sse) and items[-1].event == "done"


def test_a_retried_attempt_is_announced_with_reset(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    with running_stack(tmp_path, redis_url, env={"RETRY_BASE_S": "0.05"}) as stack:
        api = api_factory(stack.edge_url)
        fault = {"cut_after": 5, "times": 1, "key": uuid.uuid4().hex}
        task_id = api.submit(slow(content_tokens=20, tokens_per_s=200, fault=fault))
        events = read_all(api.http, task_id)
        task = api.get(task_id)
        assert task["status"] == "succeeded" and task["attempts"] == 2
        kinds = [e.event for e in events]
        assert kinds.count("reset") == 1
        before_reset = events[:kinds.index("reset")]
        assert deltas(before_reset, "content") != "", "the first attempt streamed before the cut"
        assert deltas(events, "content") == task["result"]["content"]
        assert deltas(events, "reasoning") == task["result"]["reasoning_content"]
        # Without discarding, the client would hold the first attempt's text twice.
        assert deltas(events, "content", discard_on_reset=False) != task["result"]["content"]


def test_other_tenants_and_unknown_tasks_are_not_found(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    env = {"EDGE_API_KEYS": "key-a:alice,key-b:bob"}
    with running_stack(tmp_path, redis_url, env=env) as stack:
        alice, bob = api_factory(stack.edge_url, "key-a"), api_factory(stack.edge_url, "key-b")
        task_id = alice.submit({"prompt": "mine"})
        for who, tid in ((bob, task_id), (alice, "tsk_" + "0" * 32), (alice, "nope")):
            r = who.http.get(f"/api/tasks/{tid}/events")
            assert r.status_code == 404
            assert r.json()["error"]["code"] == "not_found"
        r = alice.http.get(f"/api/tasks/{task_id}/events", headers={"Last-Event-ID": "x y"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "Last-Event-ID"
        assert read_all(alice.http, task_id)[-1].event == "done"


def test_a_stopping_edge_ends_its_streams_and_the_client_resumes_on_another(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    with running_stack(tmp_path, redis_url) as stack:
        api = api_factory(stack.edge_url)
        task_id = api.submit(slow(content_tokens=80))
        first: list[Sse] = []
        with open_events(api.http, task_id) as r:
            items = parse(r.iter_lines())
            for e in items:
                if isinstance(e, Sse):
                    first.append(e)
                if deltas(first, "content"):
                    break
            [edge] = stack.of("edge")
            edge.kill(signal.SIGTERM)  # returns once the process has exited
            first += [e for e in items if isinstance(e, Sse)]  # the stream ended cleanly
        assert edge.proc.returncode == 0
        assert not any(e.event in TERMINAL for e in first)
        stack.start("edge")
        wait_for(lambda: httpx.get(f"{stack.edge_url}/api/health").status_code == 200, 20,
                 "a new edge")
        rest = read_all(api.http, task_id, last_id=first[-1].id)
        task = api.get(task_id)
        events = first + rest
        assert len({e.id for e in events}) == len(events)
        assert deltas(events, "content") == task["result"]["content"]
        assert events[-1].event == "done"

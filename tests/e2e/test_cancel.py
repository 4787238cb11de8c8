"""DELETE /api/tasks/{id}: a running task's upstream call is closed at once and its partial
answer kept; a queued one never reaches the provider; a finished one cannot be cancelled."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from harness.processes import running_stack
from harness.waiting import wait_for
from tests.e2e.conftest import rows
from tests.e2e.sse_client import Sse, deltas, open_events, parse, read_all


def mock_records(stack: Any, tag: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{stack.mock_url}/mock/requests", params={"tag": tag})
    return list(r.json()["requests"])


def test_cancelling_a_running_task_closes_the_provider_stream_and_keeps_the_partial_answer(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    with running_stack(tmp_path, redis_url) as stack:
        api = api_factory(stack.edge_url)
        tag = uuid.uuid4().hex
        task_id = api.submit({"prompt": "a long story", "metadata": {"mock": {
            "tokens_per_s": 5, "content_tokens": 200, "reasoning_tokens": 0, "tag": tag}}})
        events: list[Sse] = []
        with open_events(api.http, task_id) as stream:
            parsed = parse(stream.iter_lines())
            for e in parsed:
                if isinstance(e, Sse):
                    events.append(e)
                    if e.event == "content":
                        break
            asked_at = time.time()
            r = api.http.delete(f"/api/tasks/{task_id}")
            assert r.status_code == 202 and r.json() == {"id": task_id, "status": "cancelling"}
            events += [e for e in parsed if isinstance(e, Sse)]
        assert events[-1].event == "cancelled"
        [record] = wait_for(lambda: [x for x in mock_records(stack, tag)
                                     if x["finished_at"] is not None], 10, "the mock's record")
        assert record["disconnected"] is True and record["outcome"] == "disconnected"
        # The one timing bound of the acceptance list: upstream closed within 1 s of the DELETE.
        assert record["disconnected_at"] - asked_at <= 1.0
        task = api.wait_terminal(task_id)
        assert task["status"] == "cancelled" and task["error"]["code"] == "cancelled"
        assert events[-1].json()["status"] == "cancelled"
        partial = task["result"]["content"]
        assert partial and record["content"].startswith(partial)
        assert record["content_tokens_sent"] < 200
        assert partial.startswith(deltas(events, "content"))
        [(status, content)] = rows(stack.store_path,
                                   "SELECT status, content FROM tasks WHERE id = ?", task_id)
        assert (status, content) == ("cancelled", partial)


def test_cancelling_a_queued_task_keeps_it_from_the_provider(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    env = {"BATCH_ADAPTIVE": "false", "BATCH_TIMEOUT_MS": "1500"}
    with running_stack(tmp_path, redis_url, env=env) as stack:
        api = api_factory(stack.edge_url)
        tag = uuid.uuid4().hex
        task_id = api.submit({"prompt": "never mind", "metadata": {"mock": {"tag": tag}}})
        r = api.http.delete(f"/api/tasks/{task_id}")
        assert r.status_code == 200 and r.json() == {"id": task_id, "status": "cancelled"}
        assert api.get(task_id)["status"] == "cancelled"
        events = read_all(api.http, task_id)
        assert events[-1].event == "cancelled"
        # The batch it was in is flushed by the timer; the processor writes its one row.
        wait_for(lambda: rows(stack.store_path, "SELECT 1 FROM tasks WHERE id = ?", task_id),
                 30, "the cancelled task's row")
        assert rows(stack.store_path, "SELECT status FROM tasks WHERE id = ?",
                    task_id) == [("cancelled",)]
        assert mock_records(stack, tag) == []
        again = api.http.delete(f"/api/tasks/{task_id}")
        assert again.status_code == 409 and again.json()["error"]["code"] == "already_terminal"


def test_a_finished_task_cannot_be_cancelled_and_an_unknown_one_is_not_found(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    with running_stack(tmp_path, redis_url) as stack:
        api = api_factory(stack.edge_url)
        task_id = api.submit({"prompt": "quick"})
        assert api.wait_terminal(task_id)["status"] == "succeeded"
        r = api.http.delete(f"/api/tasks/{task_id}")
        assert r.status_code == 409 and r.json()["error"]["code"] == "already_terminal"
        assert api.get(task_id)["status"] == "succeeded"
        r = api.http.delete(f"/api/tasks/tsk_{'0' * 32}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"

"""Answers that are not answers, errors inside a 200, and poison numbers, through real processes.

The mock provider sends each shape (``metadata.mock.fault``); a real edge, coordinator and two
processors must end the task with the provider's word, and keep serving everyone else.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from harness.processes import Stack, running_stack
from harness.waiting import wait_for
from tests.e2e.conftest import rows

MAX_ATTEMPTS = 2
# One stack answers every malformed shape in turn, so its provider fails call after call: the
# breaker (tests/integration/test_routes.py) would open and hold later tests' tasks back.
ENV = {"MAX_ATTEMPTS": str(MAX_ATTEMPTS), "RETRY_BASE_S": "0.01", "RETRY_CAP_S": "0.05",
       "AI_IDLE_TIMEOUT_S": "5", "BREAKER_FAILURES": "0"}
MAX_TOKEN_COUNT = 2**31 - 1


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Any:
    with running_stack(tmp_path_factory.mktemp("bad-answers"), redis_url, env=ENV,
                       processors=2) as s:
        yield s


def with_fault(fault: dict[str, Any]) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:12]
    return {"prompt": f"bad answers {tag}",
            "metadata": {"mock": {"tag": tag, "content_tokens": 5, "reasoning_tokens": 0,
                                  "fault": {"key": tag, **fault}}}}


def provider_calls(stack: Stack, body: dict[str, Any]) -> list[dict[str, Any]]:
    tag = body["metadata"]["mock"]["tag"]
    r = httpx.get(f"{stack.mock_url}/mock/requests", params={"tag": tag})
    return list(r.json()["requests"])


def store_row(stack: Stack, task_id: str) -> list[tuple[Any, ...]]:
    return rows(stack.store_path, "SELECT status, prompt_tokens, completion_tokens, total_tokens,"
                " finish_reason FROM tasks WHERE id = ?", task_id)


def test_poison_usage_numbers_are_clamped_and_the_fleet_goes_on(
        stack: Stack, api_factory: Any) -> None:
    # 1e19 is past SQLite's int64 (it once raised OverflowError in the store write and hung
    # both processors); sent as a float so the edge's integer policy cannot change the test.
    poison = {"prompt_tokens": 1e19, "completion_tokens": -5, "total_tokens": "lots"}
    api = api_factory(stack.edge_url)
    task = api.wait_terminal(api.submit(with_fault({"usage": poison})), 60)
    assert task["status"] == "succeeded", task
    assert task["result"]["usage"] == {"prompt_tokens": MAX_TOKEN_COUNT, "completion_tokens": 0,
                                       "total_tokens": MAX_TOKEN_COUNT}
    assert store_row(stack, task["id"]) == [("succeeded", MAX_TOKEN_COUNT, 0, MAX_TOKEN_COUNT,
                                             "stop")]
    after = [api.submit({"prompt": f"after the poison {i}"}) for i in range(10)]
    done = [api.wait_terminal(t, 60) for t in after]
    assert [t["status"] for t in done] == ["succeeded"] * 10
    assert all(len(store_row(stack, t)) == 1 for t in after)
    assert len(stack.of("processor")) == 2


NON_ANSWERS = [  # shape, expected error code, status, message fragment
    ("empty_json", "empty_answer", 502, "no choice and no finish_reason"),
    ("no_choices", "empty_answer", 502, '"status": "ok"'),
    ("only_done", "empty_answer", 502, "only [DONE]"),
    ("unparseable", "invalid_answer", 502, "<html>upstream ok</html>"),
]


@pytest.mark.parametrize(("shape", "code", "status", "fragment"), NON_ANSWERS)
def test_a_non_answer_fails_the_task(stack: Stack, api_factory: Any, shape: str, code: str,
                                     status: int, fragment: str) -> None:
    api = api_factory(stack.edge_url)
    body = with_fault({"answer": shape})
    task = api.wait_terminal(api.submit(body), 60)
    assert task["status"] == "failed", task
    assert (task["error"]["code"], task["error"]["status"]) == (code, status)
    assert fragment in task["error"]["message"]
    # Retryable (a flaky proxy may answer properly next time), so every attempt was made.
    assert task["attempts"] == MAX_ATTEMPTS == len(provider_calls(stack, body))
    assert store_row(stack, task["id"])[0][0] == "failed"


ERRORS_IN_200 = ["error_data", "error_event", "error_field", "error_done", "object_error"]


@pytest.mark.parametrize("shape", ERRORS_IN_200)
def test_an_error_inside_a_200_fails_with_the_providers_message_and_status(
        stack: Stack, api_factory: Any, shape: str) -> None:
    api = api_factory(stack.edge_url)
    message = f"provider broke ({shape}) {uuid.uuid4().hex[:6]}"
    body = with_fault({"answer": shape, "message": message, "code": 503})
    task = api.wait_terminal(api.submit(body), 60)
    assert task["status"] == "failed", task
    assert (task["error"]["message"], task["error"]["status"]) == (message, 503)
    assert task["attempts"] == MAX_ATTEMPTS  # 503 is worth retrying


def test_a_context_length_error_in_a_200_is_not_retried(stack: Stack, api_factory: Any) -> None:
    api = api_factory(stack.edge_url)
    message = "This model's maximum context length is 65536 tokens. However, you requested more."
    body = with_fault({"answer": "error_data", "message": message, "code": "server_error"})
    task = api.wait_terminal(api.submit(body), 60)
    assert task["status"] == "failed" and task["error"]["message"] == message
    assert task["attempts"] == 1 and len(provider_calls(stack, body)) == 1


def test_an_endless_line_fails_the_attempt(stack: Stack, api_factory: Any) -> None:
    api = api_factory(stack.edge_url)
    body = with_fault({"answer": "endless_line", "times": 1})
    task = api.wait_terminal(api.submit(body), 60)
    # The first attempt hits the 1 MiB line cap; the second gets a normal answer.
    assert task["status"] == "succeeded" and task["attempts"] == 2, task
    calls = wait_for(lambda: (c := provider_calls(stack, body))[0]["disconnected"] and c, 10,
                     "the mock to see the processor hang up")
    assert calls[0]["fault"] == "answer" and calls[1]["outcome"] == "completed"


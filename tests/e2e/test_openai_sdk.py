"""The official openai SDK, unmodified, against /v1: every completion is a Sluice task that
goes through the whole pipeline and stays fetchable by the id in X-Sluice-Task-Id."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
import redis

from harness.processes import Stack, running_stack
from harness.waiting import wait_for
from shared.keys import Keys

MESSAGES: Any = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str,
          stack_store: str) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("sdk"), redis_url,
                       env={"RETRY_BASE_S": "0.05"}) as s:
        yield s


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=f"{stack.edge_url}/v1", api_key="unused")
    yield c
    c.close()


def stored(stack: Stack, task_id: str) -> dict[str, Any]:
    def terminal() -> dict[str, Any] | None:
        task = httpx.get(f"{stack.edge_url}/api/tasks/{task_id}").json()
        return task if task["status"] in ("succeeded", "failed", "cancelled") else None
    return dict(wait_for(terminal, 30, f"task {task_id}"))


def reasoning_of(obj: Any) -> str | None:
    return getattr(obj, "reasoning_content", None) or (obj.model_extra or {}).get(
        "reasoning_content")


def mock(**options: Any) -> dict[str, Any]:
    return {"metadata": {"mock": options}}


def test_a_streamed_completion_relays_the_pipeline_live(
        stack: Stack, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="mock-r1", messages=MESSAGES, stream=True,
        extra_body=mock(tokens_per_s=200, content_tokens=30, reasoning_tokens=10))
    task_id = raw.headers["X-Sluice-Task-Id"]
    chunks = list(raw.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {f"chatcmpl-{task_id}"}
    assert all(c.object == "chat.completion.chunk" and c.model == "mock-r1" for c in chunks)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(reasoning_of(c.choices[0].delta) or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks), "no usage chunk unless asked for"
    task = stored(stack, task_id)
    assert task["status"] == "succeeded"
    assert content == task["result"]["content"] != ""
    assert reasoning == task["result"]["reasoning_content"] != ""


def test_include_usage_adds_a_usage_chunk(stack: Stack, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="mock-r1", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True})
    chunks = list(raw.parse())
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    task = stored(stack, raw.headers["X-Sluice-Task-Id"])
    assert last.usage.model_dump(exclude_none=True) == task["result"]["usage"]
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_a_non_streamed_completion_waits_for_the_answer(
        stack: Stack, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="mock-r1", messages=MESSAGES)
    task_id = raw.headers["X-Sluice-Task-Id"]
    done = raw.parse()
    task = stored(stack, task_id)
    assert done.id == f"chatcmpl-{task_id}" and done.object == "chat.completion"
    [choice] = done.choices
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content == task["result"]["content"] != ""
    assert reasoning_of(choice.message) == task["result"]["reasoning_content"] != ""
    assert done.usage is not None
    assert done.usage.model_dump(exclude_none=True) == task["result"]["usage"]


def test_a_retried_attempt_is_not_streamed_twice(stack: Stack, client: openai.OpenAI) -> None:
    fault = {"cut_after": 5, "times": 1, "key": uuid.uuid4().hex}
    raw = client.chat.completions.with_raw_response.create(
        model="mock-r1", messages=[{"role": "user", "content": uuid.uuid4().hex}], stream=True,
        extra_body=mock(tokens_per_s=200, content_tokens=20, fault=fault))
    chunks = list(raw.parse())
    task = stored(stack, raw.headers["X-Sluice-Task-Id"])
    assert task["attempts"] == 2
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(reasoning_of(c.choices[0].delta) or "" for c in chunks if c.choices)
    assert content == task["result"]["content"]
    assert reasoning == task["result"]["reasoning_content"]


@pytest.mark.parametrize("reasoning_tokens", [0, 4])
def test_a_retry_that_diverges_ends_the_stream_with_an_error_naming_the_task(
        stack: Stack, client: openai.OpenAI, reasoning_tokens: int) -> None:
    """The first attempt is cut after 5 words; the second (vary) answers other words, as a
    real provider at temperature > 0 does. The client must not get a splice of the two."""
    tag = uuid.uuid4().hex
    raw = client.chat.completions.with_raw_response.create(
        model="mock-r1", messages=MESSAGES, stream=True,
        extra_body=mock(tokens_per_s=200, content_tokens=20, reasoning_tokens=reasoning_tokens,
                        vary=True, tag=tag, fault={"cut_after": 5, "times": 1, "key": tag}))
    task_id = raw.headers["X-Sluice-Task-Id"]
    content = reasoning = ""
    with pytest.raises(openai.APIError) as caught:
        for chunk in raw.parse():
            content += chunk.choices[0].delta.content or ""
            reasoning += reasoning_of(chunk.choices[0].delta) or ""
    assert caught.value.code == "retry_diverged"
    assert f"GET /api/tasks/{task_id}" in caught.value.message
    task = stored(stack, task_id)
    assert task["status"] == "succeeded" and task["attempts"] == 2
    first, second = httpx.get(f"{stack.mock_url}/mock/requests", params={"tag": tag}).json()[
        "requests"]
    assert first["outcome"] == "cut" and second["outcome"] == "completed"
    # Everything the client got is the first attempt's, none of it the second's.
    assert content and first["content"].startswith(content)
    assert first["reasoning"].startswith(reasoning)
    final_reasoning, final_content = task["result"]["reasoning_content"] or "", task["result"][
        "content"]
    assert (final_reasoning, final_content) == (second["reasoning"], second["content"])
    # The second attempt did diverge (else this test would prove nothing).
    assert not (final_reasoning.startswith(reasoning) and final_content.startswith(content))


def test_a_client_that_hangs_up_does_not_cancel_its_task(
        stack: Stack, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="mock-r1", messages=MESSAGES, stream=True,
        extra_body=mock(tokens_per_s=40, content_tokens=40, reasoning_tokens=0))
    task_id = raw.headers["X-Sluice-Task-Id"]
    stream = raw.parse()
    received = ""
    for chunk in stream:
        received += chunk.choices[0].delta.content or ""
        if len(received.split()) >= 3:
            break
    stream.close()
    task = stored(stack, task_id)
    assert task["status"] == "succeeded"
    assert task["result"]["content"].startswith(received)
    assert len(task["result"]["content"].split()) == 40


def test_models_lists_the_configured_model(stack: Stack, client: openai.OpenAI) -> None:
    model = httpx.get(f"{stack.edge_url}/api/ai-status").json()["model"]
    assert model in [m.id for m in client.models.list()]


def test_an_invalid_request_gets_an_openai_shaped_4xx(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(model="mock-r1",
                                       messages=[{"role": "wizard", "content": "hi"}])  # type: ignore[misc, list-item]
    err = caught.value
    assert err.status_code == 422 and err.code == "invalid_request"
    assert err.type == "invalid_request_error" and err.param == "messages[0].role"
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="mock-r1", messages=MESSAGES,
                                       extra_body={"stream": "yes"})


def test_a_failed_task_is_an_openai_error_and_is_not_retried_by_the_sdk(
        stack: Stack, client: openai.OpenAI) -> None:
    tag = uuid.uuid4().hex
    # 501 will not change, so it is not retried: a provider failure, 502 to the client.
    failing = mock(tag=tag, fault={"status": 501, "message": "mock says no"})
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="mock-r1", messages=MESSAGES, extra_body=failing)
    err = caught.value
    assert err.status_code == 502 and err.type == "api_error"
    task = stored(stack, err.response.headers["X-Sluice-Task-Id"])
    assert task["status"] == "failed"
    assert err.code == task["error"]["code"] == "http_501"
    assert err.body["message"] == task["error"]["message"] == "mock says no"  # type: ignore[index]
    # A 400 is the provider's word about the request: the client gets it as given.
    refused = mock(tag=tag, fault={"status": 400, "message": "mock refuses"})
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="mock-r1", messages=MESSAGES, extra_body=refused)
    assert bad.value.body == {"message": "mock refuses", "type": "invalid_request_error",
                              "param": None, "code": None}
    with pytest.raises(openai.APIError) as streamed:
        for _ in client.chat.completions.create(model="mock-r1", messages=MESSAGES, stream=True,
                                                extra_body=failing):
            pass
    assert streamed.value.code == task["error"]["code"]
    records = httpx.get(f"{stack.mock_url}/mock/requests", params={"tag": tag}).json()
    assert len(records["requests"]) == 3, "one task per request: the SDK did not retry"


def test_a_cancelled_task_ends_its_completion_with_a_cancelled_error(
        stack: Stack, client: openai.OpenAI) -> None:
    slow = mock(tokens_per_s=20, content_tokens=200, reasoning_tokens=0)
    raw = client.chat.completions.with_raw_response.create(
        model="mock-r1", messages=MESSAGES, stream=True, extra_body=slow)
    task_id = raw.headers["X-Sluice-Task-Id"]
    stream = iter(raw.parse())
    while not next(stream).choices[0].delta.content:
        pass
    assert httpx.delete(f"{stack.edge_url}/api/tasks/{task_id}").status_code == 202
    with pytest.raises(openai.APIError) as streamed:
        for _ in stream:
            pass
    assert streamed.value.code == "cancelled"
    assert stored(stack, task_id)["status"] == "cancelled"

    # Not streamed: the id only comes with the answer, so find the task in the queue.
    tag = uuid.uuid4().hex
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.chat.completions.create, model="mock-r1",
                              messages=MESSAGES,
                              extra_body=mock(tag=tag, **slow["metadata"]["mock"]))
        wait_for(lambda: httpx.get(f"{stack.mock_url}/mock/requests",
                                   params={"tag": tag}).json()["requests"], 10, "the call")
        r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        [(_entry, fields)] = r.xrevrange(Keys(stack.prefix).tasks_stream, count=1)
        assert httpx.delete(f"{stack.edge_url}/api/tasks/{fields['id']}").status_code == 202
        with pytest.raises(openai.ConflictError) as caught:
            waiting.result()
    assert caught.value.code == "cancelled"
    assert caught.value.response.headers["X-Sluice-Task-Id"] == fields["id"]


def test_an_idempotency_key_replays_the_same_task(stack: Stack, client: openai.OpenAI) -> None:
    key, tag = uuid.uuid4().hex, uuid.uuid4().hex
    body = mock(tag=tag)
    first = client.chat.completions.with_raw_response.create(
        model="mock-r1", messages=MESSAGES, extra_body=body,
        extra_headers={"Idempotency-Key": key})
    again = client.chat.completions.with_raw_response.create(
        model="mock-r1", messages=MESSAGES, extra_body=body,
        extra_headers={"Idempotency-Key": key})
    assert first.headers["X-Sluice-Task-Id"] == again.headers["X-Sluice-Task-Id"]
    assert first.parse().choices[0].message.content == again.parse().choices[0].message.content
    records = httpx.get(f"{stack.mock_url}/mock/requests", params={"tag": tag}).json()
    assert len(records["requests"]) == 1
    with pytest.raises(openai.ConflictError) as caught:
        client.with_options(max_retries=0).chat.completions.create(
            model="mock-r1", messages=[{"role": "user", "content": "something else"}],
            extra_headers={"Idempotency-Key": key})
    assert caught.value.code == "idempotency_conflict"

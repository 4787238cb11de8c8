"""OpenAI's Responses API with the official ``openai`` SDK, unchanged, against the real edge,
coordinator, processor, Redis, store and mock provider: create (plain, streamed, background,
background and streamed), retrieve, a dropped stream resumed with ``starting_after``, cancel,
input items, ``previous_response_id``, ``store: false``, and the Codex CLI's request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from harness.processes import CLIENT_TLS
from harness.waiting import until
from services.edge.openai.responses import protocol
from services.edge.openai.responses.api import IGNORED_HEADER, OMITTED_HEADER
from services.mockai.text import content_tokens, digest_prompt
from services.processor.provider import request_body
from tests.integration.batch_kit import KEY_A, BatchRig, batch_rig
from tests.integration.kit import Core

CODEX = Path(__file__).resolve().parents[1] / "fixtures" / "client-requests" / \
    "codex-0.169.0-responses-request.json"
QUIET = {"reasoning_tokens": 0, "content_tokens": 5}
# 0.4 s of answer: a client that leaves after the first delta leaves mid-answer
SLOW = {"reasoning_tokens": 0, "content_tokens": 40, "tokens_per_s": 100}


def answer(messages: list[dict[str, str]], tokens: int = 5) -> str:
    """What the mock answers to these messages: its text is a function of them."""
    return "".join(content_tokens(digest_prompt(messages).seed, tokens))


def mock(**options: Any) -> dict[str, Any]:
    return {"mock": {**QUIET, **options}}


@pytest.fixture
async def rig(core: Core, tmp_path: Path) -> BatchRig:  # type: ignore[misc]
    async with batch_rig(core, tmp_path) as r:
        yield r


@pytest.mark.first_store_only
async def test_create_answers_a_completed_response(rig: BatchRig) -> None:
    response = await rig.client.responses.create(model="mock-r1", input="What is up?",
                                                 metadata=mock())
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.output_text == answer([{"role": "user", "content": "What is up?"}])
    assert [item.type for item in response.output] == ["message"]
    assert response.usage is not None and response.usage.output_tokens == 5
    assert response.model == "mock-r1" and response.completed_at is not None
    # One id space: the response is a task.
    task = await rig.core.store.get_task(protocol.task_id_of(response.id) or "")
    assert task is not None and task["tenant"] == "alpha" and task["status"] == "succeeded"
    again = await rig.client.responses.retrieve(response.id)
    assert again.model_dump() == response.model_dump()
    # The response's context is stored with its request but never reaches the provider.
    stored = orjson.loads(task["request"])
    assert stored["responses"]["input"][0]["content"][0]["text"] == "What is up?"
    sent = orjson.loads(request_body(stored, rig.edge.settings.provider))
    assert "responses" not in sent
    assert sent["messages"] == [{"role": "user", "content": "What is up?"}]


@pytest.mark.first_store_only
async def test_an_r1_answer_has_its_reasoning_item(rig: BatchRig) -> None:
    response = await rig.client.responses.create(
        model="mock-r1", input="Think first", instructions="You think.",
        metadata={"mock": {"reasoning_tokens": 6, "content_tokens": 3}})
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "message"]
    reasoning = response.output[0]
    assert reasoning.type == "reasoning" and reasoning.content
    assert reasoning.content[0].text.strip()
    assert response.output_text == answer([{"role": "system", "content": "You think."},
                                           {"role": "user", "content": "Think first"}], 3)


@pytest.mark.first_store_only
async def test_a_streamed_response_parses_in_the_sdk_with_contiguous_numbers(
        rig: BatchRig) -> None:
    numbers, kinds = [], []
    async with rig.client.responses.stream(
            model="mock-r1", input="Stream it",
            metadata={"mock": {"reasoning_tokens": 4, "content_tokens": 6}}) as stream:
        async for event in stream:
            numbers.append(event.sequence_number)
            kinds.append(event.type)
        final = await stream.get_final_response()
    assert numbers == list(range(len(numbers)))
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.reasoning_text.delta" in kinds and "response.output_text.delta" in kinds
    assert final.output_text == answer([{"role": "user", "content": "Stream it"}], 6)
    stored = await rig.client.responses.retrieve(final.id)
    assert stored.output_text == final.output_text
    assert [i.id for i in stored.output] == [i.id for i in final.output]


@pytest.mark.first_store_only
async def test_background_returns_at_once_and_is_retrieved_when_done(rig: BatchRig) -> None:
    response = await rig.client.responses.create(model="mock-r1", input="Later",
                                                 background=True, metadata=mock())
    assert response.status == "queued" and response.background is True

    async def done() -> Any:
        r = await rig.client.responses.retrieve(response.id)
        return r if r.status == "completed" else None

    finished = await until(done, 10, "done")
    assert finished.output_text == answer([{"role": "user", "content": "Later"}])


@pytest.mark.first_store_only
async def test_a_dropped_stream_resumes_after_its_last_number(rig: BatchRig) -> None:
    events: list[Any] = []
    stream = await rig.client.responses.create(model="mock-r1", input="Long one",
                                               background=True, stream=True,
                                               metadata={"mock": SLOW})
    async for event in stream:
        events.append(event)
        if event.type == "response.output_text.delta":
            break  # the client drops the connection mid-answer
    await stream.close()
    response_id = events[0].response.id
    last = events[-1].sequence_number
    resumed = await rig.client.responses.retrieve(response_id, stream=True,
                                                  starting_after=last)
    async for event in resumed:
        events.append(event)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == answer([{"role": "user", "content": "Long one"}], 40)
    # A replay from the start gives the very same events.
    replay = await rig.client.responses.retrieve(response_id, stream=True)
    again = [event async for event in replay]
    assert [e.model_dump() for e in again] == [e.model_dump() for e in events]


@pytest.mark.first_store_only
async def test_cancel_is_terminal_and_cancelling_twice_answers_the_same(rig: BatchRig) -> None:
    response = await rig.client.responses.create(
        model="mock-r1", input="Never mind", background=True,
        metadata={"mock": {"ttft_ms": 30_000, **QUIET}})
    cancelled = await rig.client.responses.cancel(response.id)
    assert cancelled.status == "cancelled"
    twice = await rig.client.responses.cancel(response.id)
    assert twice.model_dump() == cancelled.model_dump()
    assert (await rig.client.responses.retrieve(response.id)).status == "cancelled"
    finished = await rig.client.responses.create(model="mock-r1", input="done",
                                                 metadata=mock())
    with pytest.raises(openai.ConflictError):
        await rig.client.responses.cancel(finished.id)


@pytest.mark.first_store_only
async def test_input_items_are_listed_as_openai_pages_them(rig: BatchRig) -> None:
    response = await rig.client.responses.create(
        model="mock-r1", metadata=mock(),
        input=[{"role": "user", "content": "one"}, {"role": "user", "content": "two"},
               {"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "three"}]}])
    page = await rig.client.responses.input_items.list(response.id, order="asc", limit=2)
    texts = [item.content[0].text for item in page.data]  # type: ignore[union-attr]
    assert texts == ["one", "two"] and page.has_more
    rest = await rig.client.responses.input_items.list(response.id, order="asc",
                                                       after=page.data[-1].id)
    assert [item.content[0].text for item in rest.data] == ["three"]  # type: ignore[union-attr]
    newest = await rig.client.responses.input_items.list(response.id)
    assert [item.content[0].text for item in newest.data] == [  # type: ignore[union-attr]
        "three", "two", "one"]


@pytest.mark.first_store_only
async def test_previous_response_id_replays_the_earlier_turn(rig: BatchRig) -> None:
    first = await rig.client.responses.create(model="mock-r1", input="What is 2+2?",
                                              metadata=mock())
    second = await rig.client.responses.create(model="mock-r1", input="And times 3?",
                                               previous_response_id=first.id, metadata=mock())
    assert second.previous_response_id == first.id
    assert second.output_text == answer([
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And times 3?"}])
    third = await rig.client.responses.create(model="mock-r1", input="Why?",
                                              previous_response_id=second.id, metadata=mock())
    assert third.output_text == answer([
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And times 3?"},
        {"role": "assistant", "content": second.output_text},
        {"role": "user", "content": "Why?"}])
    # Another tenant's response is not found, as every task of another tenant is.
    with pytest.raises(openai.NotFoundError) as caught:
        await rig.other.responses.create(model="mock-r1", input="x",
                                         previous_response_id=first.id)
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        await rig.other.responses.retrieve(first.id)


@pytest.mark.first_store_only
async def test_store_false_is_not_retrievable_and_background_needs_it(rig: BatchRig) -> None:
    response = await rig.client.responses.create(model="mock-r1", input="forget me",
                                                 store=False, metadata=mock())
    assert response.status == "completed" and response.store is False
    with pytest.raises(openai.NotFoundError):
        await rig.client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError) as caught:
        await rig.client.responses.create(model="mock-r1", input="x", store=False,
                                          background=True)
    assert caught.value.body["param"] == "background"  # type: ignore[index]


async def forgotten(rig: BatchRig, task_id: str) -> bool:
    """Nothing serves the task any more: /api/tasks/{id} is a 404."""
    url = str(rig.edge.client.make_url(f"/api/tasks/{task_id}"))
    async with httpx.AsyncClient(verify=CLIENT_TLS, timeout=30) as http:
        got = await http.get(url, headers={"Authorization": f"Bearer {KEY_A}"})
    assert got.status_code in (200, 404), got.text
    return got.status_code == 404


async def assert_nothing_kept(rig: BatchRig, task_id: str, *texts: str) -> None:
    """No Redis key of the task, and its one row a tombstone holding none of ``texts``."""
    assert await forgotten(rig, task_id)
    assert not await rig.core.redis.exists(rig.core.keys.task(task_id),
                                           rig.core.keys.events(task_id))
    row = await rig.core.store.get_task(task_id)
    assert row is not None and row["status"] == "deleted", row
    kept = orjson.dumps(row).decode()
    for text in texts:
        assert text and text not in kept, (text, row)


async def test_a_store_false_response_is_forgotten_once_answered(rig: BatchRig) -> None:
    """On both stores: once a store:false response is answered (plain or streamed), nothing
    keeps it: no Redis key, and its row a tombstone without its request or answer."""
    plain = await rig.client.responses.create(model="mock-r1", input="Secret words",
                                              store=False, metadata=mock())
    assert plain.output_text == answer([{"role": "user", "content": "Secret words"}])
    await assert_nothing_kept(rig, protocol.task_id_of(plain.id) or "", "Secret words",
                              plain.output_text)
    async with rig.client.responses.stream(model="mock-r1", input="Streamed secret",
                                           store=False, metadata=mock()) as stream:
        final = await stream.get_final_response()
    assert final.output_text == answer([{"role": "user", "content": "Streamed secret"}])
    await assert_nothing_kept(rig, protocol.task_id_of(final.id) or "", "Streamed secret",
                              final.output_text)


async def test_a_store_false_response_whose_client_left_is_forgotten_at_its_end(
        rig: BatchRig) -> None:
    """The client hangs up mid-stream: the response runs on to its end (a client that leaves
    does not cancel it), and is forgotten then."""
    events: list[Any] = []
    stream = await rig.client.responses.create(model="mock-r1", input="Secret, then gone",
                                               store=False, stream=True,
                                               metadata={"mock": SLOW})
    async for event in stream:
        events.append(event)
        if event.type == "response.output_text.delta":
            break
    await stream.close()
    task_id = protocol.task_id_of(events[0].response.id) or ""
    await until(lambda: forgotten(rig, task_id), 20, "the response forgotten", interval=0.05)
    # It ran to its end, not cancelled by the client's leaving.
    assert await rig.core.redis.hget(rig.core.keys.stats, "tasks_succeeded") == "1"
    text = answer([{"role": "user", "content": "Secret, then gone"}], 40)
    await assert_nothing_kept(rig, task_id, "Secret, then gone", text)


def tagged(tag: str, **options: Any) -> dict[str, Any]:
    """Metadata asking the mock to record the request under ``tag``."""
    return {"mock": {**QUIET, "record": True, "tag": tag, **options}}


async def received(rig: BatchRig, tag: str) -> dict[str, Any]:
    """The one body the mock received under ``tag``."""
    [record] = [r for r in await rig.core.mock_requests() if r["tag"] == tag]
    return dict(record["body"])


WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False},
           "strict": True}


async def test_a_function_tool_round_trip(rig: BatchRig) -> None:
    """On both stores (the second turn reads the first from them): the model calls the tool,
    the client runs it and sends its output with previous_response_id, the model answers."""
    first = await rig.client.responses.create(
        model="mock-r1", input="Weather in Paris?", tools=[WEATHER],  # type: ignore[list-item]
        metadata=tagged("turn-1", tool_arguments='{"city": "Paris"}'))
    assert first.status == "completed" and first.output_text == ""
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert orjson.loads(call.arguments) == {"city": "Paris"} and call.call_id
    sent = await received(rig, "turn-1")
    assert sent["tools"] == [{"type": "function", "function": {
        key: WEATHER[key] for key in ("name", "description", "parameters", "strict")}}]

    second = await rig.client.responses.create(
        model="mock-r1", previous_response_id=first.id, tools=[WEATHER],  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": '{"celsius": 21}'}],
        metadata=tagged("turn-2"))
    assert second.status == "completed"
    assert [item.type for item in second.output] == ["message"]
    messages = (await received(rig, "turn-2"))["messages"]
    assert messages == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": call.call_id, "type": "function",
            "function": {"name": "get_weather", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": '{"celsius": 21}'}]
    assert second.output_text and second.output_text == answer(messages)


@pytest.mark.first_store_only
async def test_a_json_schema_text_format_reaches_the_provider_as_sent(rig: BatchRig) -> None:
    schema = {"type": "object", "properties": {"temp": {"type": "number"},
                                               "sky": {"enum": ["clear", "cloudy"]}},
              "required": ["temp", "sky"], "additionalProperties": False}
    response = await rig.client.responses.create(
        model="mock-r1", input="Weather as JSON", metadata=tagged("schema"),
        text={"format": {"type": "json_schema", "name": "weather", "schema": schema,
                         "strict": True, "description": "The weather."}})
    assert response.status == "completed"
    assert response.text.format.type == "json_schema"  # type: ignore[union-attr]
    sent = await received(rig, "schema")
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "weather", "schema": schema, "strict": True, "description": "The weather."}}


@pytest.mark.first_store_only
async def test_bad_requests_name_the_responses_field(rig: BatchRig) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await rig.client.responses.create(model="mock-r1", input="x", max_output_tokens=10**9)
    assert caught.value.body["param"] == "max_output_tokens"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        await rig.client.responses.create(model="mock-r1", input="x", temperature=7)
    assert caught.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as caught:
        await rig.client.responses.create(model="no-such-model", input="x")
    assert caught.value.body["param"] == "model"  # type: ignore[index]
    for bad in ("resp_nope", "tsk_" + "0" * 32, "resp_" + "0" * 32):
        with pytest.raises(openai.NotFoundError):
            await rig.client.responses.retrieve(bad)
    # A chat completion is a task but not a response.
    chat = await rig.client.chat.completions.create(
        model="mock-r1", messages=[{"role": "user", "content": "x"}],
        metadata=mock())  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        await rig.client.responses.retrieve("resp_" + chat.id.removeprefix("chatcmpl-tsk_"))
    assert await rig.core.store.get_task(chat.id.removeprefix("chatcmpl-")) is not None


@pytest.mark.first_store_only
async def test_hosted_tools_are_left_out_and_named(rig: BatchRig) -> None:
    raw = await rig.client.responses.with_raw_response.create(
        model="mock-r1", input="search?", metadata=mock(),
        tools=[{"type": "web_search"}], include=["reasoning.encrypted_content"])
    assert raw.headers[OMITTED_HEADER] == "web_search"
    assert raw.headers[IGNORED_HEADER] == "include:reasoning.encrypted_content"
    assert raw.parse().status == "completed"
    # Names from the client cannot break a header (a control character closed the
    # connection before they were made safe).
    raw = await rig.client.responses.with_raw_response.create(
        model="mock-r1", input="x", metadata=mock(),
        tools=[{"type": "evil\r\nX-Injected: 1"}], include=["\u001f"])
    assert raw.headers[OMITTED_HEADER] == "evil??X-Injected: 1"
    assert raw.headers[IGNORED_HEADER] == "include:?"
    assert "X-Injected" not in raw.headers


@pytest.mark.first_store_only
async def test_hosted_tools_can_be_refused(core: Core, tmp_path: Path) -> None:
    async with batch_rig(core, tmp_path, RESPONSES_HOSTED_TOOLS="refuse") as rig:
        with pytest.raises(openai.BadRequestError) as caught:
            await rig.client.responses.create(model="mock-r1", input="x",
                                              tools=[{"type": "web_search"}])
        assert caught.value.body["param"] == "tools"  # type: ignore[index]
        assert "web_search" in caught.value.message


@pytest.mark.first_store_only
async def test_the_codex_cli_request_streams_an_answer(rig: BatchRig) -> None:
    body = orjson.loads(CODEX.read_bytes())
    body["model"] = "mock-r1"
    body["metadata"] = mock()
    url = str(rig.edge.client.make_url("/v1/responses"))
    events: list[dict[str, Any]] = []
    async with httpx.AsyncClient(verify=CLIENT_TLS, timeout=30) as http, http.stream(
            "POST", url, json=body, headers={"Authorization": f"Bearer {KEY_A}",
                                             "Accept": "text/event-stream"}) as resp:
        assert resp.status_code == 200
        assert resp.headers[OMITTED_HEADER] == "web_search"
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                events.append(orjson.loads(line[6:]))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["store"] is False
    # Its function tools reach the provider (the mock calls the first it is offered), and the
    # call streams back as the Responses API gives one: pieces, then the whole call.
    [call] = events[-1]["response"]["output"]
    offered = {t["name"] for t in body["tools"] if t.get("type") == "function"}
    assert call["type"] == "function_call" and call["name"] in offered, call
    pieces = "".join(e["delta"] for e in events
                     if e["type"] == "response.function_call_arguments.delta")
    assert pieces and pieces == call["arguments"]
    assert orjson.loads(call["arguments"])


async def test_once_redis_forgot_it_the_store_serves_the_response(rig: BatchRig) -> None:
    """Retrieve, a stream and a later turn read the response from the store alone (as after
    EVENTS_RETENTION_S, or a Redis that lost its data): any edge, after restarts."""
    first = await rig.client.responses.create(
        model="mock-r1", input="Remember this", metadata={"mock": {"reasoning_tokens": 3,
                                                                   "content_tokens": 4}})
    task_id = protocol.task_id_of(first.id) or ""
    assert await rig.core.redis.delete(rig.core.keys.task(task_id),
                                       rig.core.keys.events(task_id)) == 2
    again = await rig.client.responses.retrieve(first.id)
    assert again.output_text == first.output_text
    assert [i.id for i in again.output] == [i.id for i in first.output]
    stream = await rig.client.responses.retrieve(first.id, stream=True)
    events = [event async for event in stream]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == first.output_text
    items = await rig.client.responses.input_items.list(first.id)
    assert [item.content[0].text for item in items.data] == [  # type: ignore[union-attr]
        "Remember this"]
    second = await rig.client.responses.create(model="mock-r1", input="What was it?",
                                               previous_response_id=first.id,
                                               metadata=mock())
    assert second.output_text == answer([
        {"role": "user", "content": "Remember this"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What was it?"}])


async def test_delete_answers_openais_shape_and_a_deleted_response_is_gone(
        rig: BatchRig) -> None:
    """On both stores: the row becomes a tombstone and nothing serves the response again, from
    Redis or from the store; another tenant's id is a 404 and deletes nothing."""
    first = await rig.client.responses.create(model="mock-r1", input="Delete me",
                                              metadata=mock())
    task_id = protocol.task_id_of(first.id) or ""
    with pytest.raises(openai.NotFoundError):
        await rig.other.responses.delete(first.id)
    assert (await rig.client.responses.retrieve(first.id)).status == "completed"
    url = str(rig.edge.client.make_url(f"/v1/responses/{first.id}"))
    async with httpx.AsyncClient(verify=CLIENT_TLS, timeout=30) as http:
        gone = await http.delete(url, headers={"Authorization": f"Bearer {KEY_A}"})
        assert gone.status_code == 200
        assert gone.json() == {"id": first.id, "object": "response.deleted", "deleted": True}
        again = await http.delete(url, headers={"Authorization": f"Bearer {KEY_A}"})
        assert again.status_code == 404
    for read in (rig.client.responses.retrieve(first.id),
                 rig.client.responses.input_items.list(first.id),
                 rig.client.responses.create(model="mock-r1", input="x",
                                             previous_response_id=first.id)):
        with pytest.raises(openai.NotFoundError):
            await read
    assert not await rig.core.redis.exists(rig.core.keys.task(task_id))
    row = await rig.core.store.get_task(task_id)
    assert row is not None and row["status"] == "deleted" and row["content"] is None
    tasks_url = str(rig.edge.client.make_url(f"/api/tasks/{task_id}"))
    async with httpx.AsyncClient(verify=CLIENT_TLS, timeout=30) as http:
        assert (await http.get(tasks_url, headers={"Authorization": f"Bearer {KEY_A}"})
                ).status_code == 404


@pytest.mark.first_store_only
async def test_deleting_a_running_response_cancels_it_first(rig: BatchRig) -> None:
    response = await rig.client.responses.create(
        model="mock-r1", input="Long one", background=True,
        metadata={"mock": {"ttft_ms": 30_000, **QUIET}})
    task_id = protocol.task_id_of(response.id) or ""

    async def running() -> bool:
        return await rig.core.redis.hget(rig.core.keys.task(task_id), "status") == "running"

    await until(running, 10, "running")
    deleted = await rig.client.responses.delete(response.id)
    assert deleted is None  # the SDK's delete answers nothing on success
    with pytest.raises(openai.NotFoundError):
        await rig.client.responses.retrieve(response.id)
    row = await rig.core.store.get_task(task_id)
    assert row is not None and row["status"] == "deleted"


def responses_line(custom_id: str, body: dict[str, Any], url: str = "/v1/responses") -> bytes:
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


async def test_a_batch_of_responses_answers_response_objects(rig: BatchRig) -> None:
    """Batch API lines whose url is /v1/responses: checked by the Responses rules, queued as
    response tasks, and answered in the output file with whole response objects, which
    retrieve serves too (one id space)."""
    bad = await rig.upload([
        responses_line("x", {"model": "mock-r1", "input": "a", "temperature": 7}),
        responses_line("y", {"model": "mock-r1", "input": "b",
                             "previous_response_id": "resp_" + "0" * 32}),
        responses_line("z", {"model": "mock-r1", "input": "c"}, url="/v1/chat/completions"),
        responses_line("w", {"model": "mock-r1", "input": "d", "store": False})])
    failed = await rig.client.batches.create(input_file_id=bad, endpoint="/v1/responses",
                                             completion_window="24h")
    failed = await rig.wait(failed.id)
    assert failed.status == "failed" and failed.errors is not None
    assert [(e.line, e.param) for e in failed.errors.data or []] == [
        (1, "body.temperature"), (2, "body.previous_response_id"), (3, "url"),
        (4, "body.store")]
    good = await rig.upload([
        responses_line("one", {"model": "mock-r1", "input": "First", "metadata": mock()}),
        responses_line("two", {"model": "mock-r1", "input": "Second",
                               "instructions": "Be brief.", "metadata": mock()})])
    batch = await rig.client.batches.create(input_file_id=good, endpoint="/v1/responses",
                                            completion_window="24h")
    assert batch.endpoint == "/v1/responses"
    done = await rig.wait(batch.id)
    assert done.status == "completed" and done.error_file_id is None
    out = {o["custom_id"]: o for o in await rig.jsonl(done.output_file_id)}
    assert set(out) == {"one", "two"}
    for custom_id, messages in (
            ("one", [{"role": "user", "content": "First"}]),
            ("two", [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Second"}])):
        body = out[custom_id]["response"]["body"]
        assert out[custom_id]["response"]["status_code"] == 200
        assert body["object"] == "response" and body["status"] == "completed"
        assert body["id"].startswith("resp_")
        text = body["output"][-1]["content"][0]["text"]
        assert text == answer(messages)
        again = await rig.client.responses.retrieve(body["id"])
        assert again.output_text == text

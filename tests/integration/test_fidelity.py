"""Everything a client sends reaches the provider, and everything the provider answers reaches
the client: the real edge, coordinator and processor in process, the mock provider recording
what it receives, the official openai SDK (or plain HTTP on /api/tasks) as the client.

Forwarding is store-blind (first store only); the stored result is read back from each store.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from harness.processes import CLIENT_TLS
from harness.waiting import until
from services.mockai.app import create_app
from services.mockai.rich import FINGERPRINT
from services.mockai.settings import MockSettings
from shared import tasks
from tests.integration.batch_kit import KEY_A, BatchRig, batch_rig
from tests.integration.kit import Core
from tests.unit.test_sse_corpus import EXPECTED, corpus_dir

AUTH = {"Authorization": f"Bearer {KEY_A}"}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}, "strict": True}}]
IMAGE = "data:image/png;base64," + "iVBORw0KGgo" * 50
# Every message field a client may send, as given: parts of every type, reasoning kept on an
# assistant turn, tool calls and their results, names, DeepSeek's prefix.
MESSAGES: list[dict[str, Any]] = [
    {"role": "developer", "content": "Be terse.", "name": "ops"},
    {"role": "system", "content": [{"type": "text", "text": "You answer in French."}]},
    {"role": "user", "name": "alice", "content": [
        {"type": "text", "text": "What is in this picture, and the weather?"},
        {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-abc", "filename": "a.pdf"}}]},
    {"role": "assistant", "content": None, "reasoning_content": "Need the weather first.",
     "reasoning": "Need the weather first.", "refusal": None,
     "tool_calls": [{"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, clear"},
    {"role": "assistant", "content": "Il fait", "prefix": True},
]
# Every documented Chat Completions parameter Sluice does not own, and provider extras.
PARAMS: dict[str, Any] = {
    "tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": False,
    "response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": {"type": "object"}, "strict": True}},
    "reasoning_effort": "low", "seed": 42, "presence_penalty": 0.5, "frequency_penalty": -0.25,
    "logprobs": True, "top_logprobs": 3, "user": "user-7", "logit_bias": {"50256": -100},
    "max_completion_tokens": 77, "temperature": 1, "top_p": 0.9, "stop": ["\n\n"], "n": 1,
    "service_tier": "auto", "store": False, "modalities": ["text"], "verbosity": "low",
    "prediction": {"type": "content", "content": "Il fait beau"},
    "prompt_cache_key": "k1", "safety_identifier": "s1", "web_search_options": {},
}
EXTRAS: dict[str, Any] = {"enable_thinking": True, "thinking_budget": 512, "top_k": 20,
                          "min_p": 0.05}


@pytest.fixture
async def rig(core: Core, tmp_path: Path) -> AsyncIterator[BatchRig]:
    async with batch_rig(core, tmp_path) as r:
        yield r


def tagged(tag: str, **mock: Any) -> dict[str, Any]:
    return {"mock": {"record": True, "tag": tag, "reasoning_tokens": 0, **mock}}


async def received(core: Core, tag: str, count: int = 1) -> list[dict[str, Any]]:
    """The bodies the mock received under ``tag``, once ``count`` of them came."""
    async def bodies() -> list[dict[str, Any]] | None:
        records = [r for r in await core.mock_requests() if r["tag"] == tag]
        return [r["body"] for r in records] if len(records) >= count else None
    return list(await until(bodies, 10, "bodies"))


async def http(rig: BatchRig) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=str(rig.edge.client.make_url("")), headers=AUTH,
                             verify=CLIENT_TLS, timeout=30)


def expected(sent: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """What the provider must get for ``sent``: the same, with Sluice's stream settings."""
    body = {k: v for k, v in sent.items() if k not in ("deadline", "priority",
                                                        "provider_options")}
    return {**body, **changes, "stream": True,
            "stream_options": {**(sent.get("stream_options") or {}), "include_usage": True}}


@pytest.mark.first_store_only
@pytest.mark.parametrize("stream", [False, True])
async def test_every_parameter_and_message_field_reaches_the_provider_through_v1(
        rig: BatchRig, stream: bool) -> None:
    tag = f"v1-{stream}"
    kwargs: dict[str, Any] = {"model": "mock-r1", "messages": MESSAGES, **PARAMS,
                              "metadata": tagged(tag), "extra_body": EXTRAS}
    if stream:
        kwargs["stream_options"] = {"include_usage": False}
        chunks = [c async for c in await rig.client.chat.completions.create(
            stream=True, **kwargs)]
        assert chunks[-1].choices[0].finish_reason is not None
    else:
        await rig.client.chat.completions.create(**kwargs)
    [body] = await received(rig.core, tag)
    sent = {k: v for k, v in kwargs.items() if k != "extra_body"}
    if stream:
        sent["stream"] = True
    assert body == expected({**sent, **EXTRAS})


@pytest.mark.first_store_only
async def test_every_field_reaches_the_provider_through_api_tasks(rig: BatchRig) -> None:
    sent = {"model": "mock-r1", "messages": MESSAGES, **PARAMS, "metadata": tagged("tasks"),
            "deadline": 600, "priority": 3, "provider_options": EXTRAS}
    async with await http(rig) as client:
        r = await client.post("/api/tasks", json=sent)
        assert r.status_code == 202, r.text
        [body] = await received(rig.core, "tasks")
        assert body == expected({**sent, **EXTRAS})
        # A field that is neither Chat Completions' nor Sluice's stays a 422: the typo guard.
        r = await client.post("/api/tasks", json={**sent, "top_k": 20})
        assert r.status_code == 422 and r.json()["error"]["field"] == "top_k"
        r = await client.post("/api/tasks", json={"prompt": "hi", "metadata": tagged("prompt"),
                                                  "provider_options": {"model": "x"}})
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "provider_options.model"


@pytest.mark.first_store_only
async def test_a_batch_line_is_forwarded_by_the_same_rules(rig: BatchRig) -> None:
    body = {"model": "mock-r1", "messages": MESSAGES, **PARAMS, **EXTRAS,
            "metadata": tagged("batch")}
    batch = await rig.run([orjson.dumps({"custom_id": "a", "method": "POST",
                                         "url": "/v1/chat/completions", "body": body})])
    assert (await rig.wait(batch.id)).status == "completed"
    [got] = await received(rig.core, "batch")
    assert got == expected(body)


async def test_drop_params_and_extra_body_shape_every_call(core: Core, tmp_path: Path) -> None:
    env = {"AI_DROP_PARAMS": "seed, logit_bias",
           "AI_EXTRA_BODY": '{"enable_thinking": true, "top_k": 5}'}
    core_env = core.env
    core.env = lambda **extra: core_env(**env, **extra)  # type: ignore[method-assign]
    async with batch_rig(core, tmp_path) as rig, await http(rig) as client:
        sent = {"messages": [{"role": "user", "content": "hi"}], "seed": 1,
                "logit_bias": {"1": 2}, "top_p": 0.5, "metadata": tagged("deploy"),
                "provider_options": {"top_k": 9}}
        assert (await client.post("/api/tasks", json=sent)).status_code == 202
        [body] = await received(core, "deploy")
    # Dropped; the deployment's extras where the request set none (its own top_k wins).
    want = expected({"model": "mock-r1", **sent, "enable_thinking": True, "top_k": 9})
    del want["seed"], want["logit_bias"]
    assert body == want


async def _settle(rig: BatchRig, task_id: str) -> dict[str, Any]:
    async with await http(rig) as client:
        async with asyncio.timeout(30):
            while True:
                view = (await client.get(f"/api/tasks/{task_id}")).json()
                if view["status"] in ("succeeded", "failed", "cancelled"):
                    return dict(view)
                await asyncio.sleep(0.02)


# --- the answer, whole ---------------------------------------------------------------------------
WEATHER = '{"city": "Paris", "units": "celsius"}'


def sdk_args(tag: str, **mock: Any) -> dict[str, Any]:
    return {"model": "mock-r1", "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "metadata": tagged(tag, **mock)}


async def answer(rig: BatchRig, stream: bool, **kwargs: Any) -> tuple[Any, str]:
    """The SDK's completion (streamed: its own reassembly) and the task id."""
    if stream:
        async with rig.client.chat.completions.stream(**kwargs) as s:
            final = await s.get_final_completion()
        return final, final.id.removeprefix("chatcmpl-")
    raw = await rig.client.chat.completions.with_raw_response.create(**kwargs)
    return raw.parse(), raw.headers["X-Sluice-Task-Id"]


async def stored(rig: BatchRig, task_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The task's result from Redis (GET /api/tasks/{id}) and from its store row."""
    view = await _settle(rig, task_id)
    row = await rig.core.store.get_task(task_id)
    assert row is not None
    return view["result"], tasks.view_from_row(row)["result"]


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls_reach_the_client_and_the_stored_result(rig: BatchRig,
                                                                 stream: bool) -> None:
    tag = f"tools-{stream}"
    final, task_id = await answer(rig, stream, tools=TOOLS, **sdk_args(
        tag, tool_arguments=WEATHER, tool_calls=2, split=3))
    [sent] = [r for r in await rig.core.mock_requests() if r["tag"] == tag]
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = [(c.id, c.type, c.function.name, c.function.arguments)
             for c in choice.message.tool_calls or []]
    mock_id = sent["id"][-10:]
    assert calls == [(f"call_{mock_id}_0_{k}", "function", "get_weather", WEATHER)
                     for k in range(2)]
    assert final.system_fingerprint == FINGERPRINT
    for result in await stored(rig, task_id):
        assert result["finish_reason"] == "tool_calls"
        assert [(c["id"], c["type"], c["function"]["name"], c["function"]["arguments"])
                for c in result["tool_calls"]] == calls
        assert result["system_fingerprint"] == FINGERPRINT


@pytest.mark.parametrize("stream", [False, True])
async def test_logprobs_n_choices_and_usage_details_whole(rig: BatchRig, stream: bool) -> None:
    kwargs: dict[str, Any] = {**sdk_args(f"n-{stream}", content_tokens=6), "n": 3,
                              "logprobs": True, "top_logprobs": 2}
    if stream:
        kwargs["stream_options"] = {"include_usage": True}
    final, task_id = await answer(rig, stream, **kwargs)
    # The same request straight to the mock: what the provider answers, to compare with.
    async with openai.AsyncOpenAI(base_url=rig.core.mock_url, api_key="x",
                                  http_client=openai.DefaultAsyncHttpxClient(
                                      verify=CLIENT_TLS)) as direct:
        kwargs["metadata"] = tagged("direct", content_tokens=6)
        want = await direct.chat.completions.create(**kwargs) if not stream else None
        if stream:
            async with direct.chat.completions.stream(**kwargs) as s:
                want = await s.get_final_completion()
    assert want is not None and len(want.choices) == 3
    for got, exp in zip(final.choices, want.choices, strict=True):
        assert got.message.model_dump() == exp.message.model_dump()
        assert got.model_dump() == exp.model_dump()
    assert final.usage is not None and want.usage is not None
    assert final.usage.model_dump() == want.usage.model_dump()
    assert final.usage.completion_tokens_details is not None
    for result in await stored(rig, task_id):
        assert [(c["index"], c["content"], c["finish_reason"]) for c in result["choices"]] == [
            (c.index, c.message.content, c.finish_reason) for c in want.choices]
        assert [c["logprobs"] for c in result["choices"]] == [
            c.logprobs.model_dump(exclude_none=True) for c in want.choices if c.logprobs]
        assert result["logprobs"] == result["choices"][0]["logprobs"]
        assert result["usage"] == want.usage.model_dump(exclude_none=True)


async def test_a_two_turn_agent_loop_with_the_sdk(rig: BatchRig) -> None:
    messages: list[Any] = [{"role": "user", "content": "What's the weather in Paris?"}]
    first = await rig.client.chat.completions.create(
        model="mock-r1", messages=messages, tools=TOOLS,
        metadata=tagged("agent", tool_arguments=WEATHER))
    call = (first.choices[0].message.tool_calls or [None])[0]
    assert first.choices[0].finish_reason == "tool_calls" and call is not None
    assert call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"city": "Paris", "units": "celsius"}
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18 C, clear"}]
    second = await rig.client.chat.completions.create(
        model="mock-r1", messages=messages, tools=TOOLS, metadata=tagged("agent"))
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls
    # The second turn reached the provider with the tool call and its result as sent.
    bodies = await received(rig.core, "agent", 2)
    assert bodies[1]["messages"][1]["tool_calls"][0]["id"] == call.id
    assert bodies[1]["messages"][2] == {"role": "tool", "tool_call_id": call.id,
                                        "content": "18 C, clear"}


async def test_no_usage_from_the_provider_is_stored_as_null(rig: BatchRig) -> None:
    final, task_id = await answer(rig, True, stream_options={"include_usage": True},
                                  **sdk_args("nousage", usage=False))
    assert final.choices[0].message.content and final.usage is None
    # Asked for all the same: a provider that can report it does.
    [body] = await received(rig.core, "nousage")
    assert body["stream_options"] == {"include_usage": True}
    for result in await stored(rig, task_id):
        assert result["usage"] is None
    row = await rig.core.store.get_task(task_id)
    assert row is not None and row["total_tokens"] is None


@pytest.mark.first_store_only
@pytest.mark.parametrize("stream", [False, True])
async def test_a_provider_400_reaches_the_client_as_given_after_one_call(
        rig: BatchRig, stream: bool) -> None:
    tag = f"refused-{stream}"
    with pytest.raises(openai.BadRequestError if not stream else openai.APIError) as caught:
        if stream:
            async for _ in await rig.client.chat.completions.create(
                    stream=True, extra_body={"top_k": 3},
                    **sdk_args(tag, reject=["top_k"])):
                pass
        else:
            await rig.client.chat.completions.create(extra_body={"top_k": 3},
                                                     **sdk_args(tag, reject=["top_k"]))
    err = caught.value
    assert err.message.endswith("Unrecognized request argument supplied: top_k")
    assert err.body == {"message": "Unrecognized request argument supplied: top_k",
                        "type": "invalid_request_error", "param": "top_k", "code": None}
    if not stream:
        assert isinstance(err, openai.BadRequestError) and err.status_code == 400
    records = [r for r in await rig.core.mock_requests() if r["tag"] == tag]
    assert [r["status"] for r in records] == [400], "one call, not retried"


@pytest.mark.first_store_only
async def test_a_batch_output_line_holds_the_whole_answer(rig: BatchRig) -> None:
    body = {**sdk_args("batch-tools", tool_arguments=WEATHER), "tools": TOOLS}
    refused = {**sdk_args("batch-400", reject=["seed"]), "seed": 1}
    batch = await rig.run([orjson.dumps({"custom_id": cid, "method": "POST",
                                         "url": "/v1/chat/completions", "body": b})
                           for cid, b in (("tools", body), ("refused", refused))])
    done = await rig.wait(batch.id)
    [out] = await rig.jsonl(done.output_file_id)
    message = out["response"]["body"]["choices"][0]["message"]
    assert out["response"]["body"]["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"][0]["function"] == {"name": "get_weather",
                                                    "arguments": WEATHER}
    [err] = await rig.jsonl(done.error_file_id)
    assert err["response"]["status_code"] == 400
    assert err["response"]["body"]["error"]["param"] == "seed"


# --- the SSE corpus through the whole pipeline ---------------------------------------------------
TOOL_CAPTURES = sorted(n for n in EXPECTED if n[:3] in ("03_", "04_", "08_", "09_", "21_",
                                                        "22_"))


@pytest.fixture
async def replaying(core: Core, tmp_path: Path) -> AsyncIterator[BatchRig]:
    """The rig with a mock that answers the corpus's captures byte for byte."""
    server = TestServer(create_app(MockSettings(ttft_ms=0, tokens_per_s=0,
                                                replay_dir=str(corpus_dir()))))
    await server.start_server()
    try:
        async with batch_rig(dataclasses.replace(
                core, mock_url=str(server.make_url("/v1"))), tmp_path) as r:
            yield r
    finally:
        await server.close()


@pytest.mark.first_store_only
@pytest.mark.parametrize("name", TOOL_CAPTURES)
@pytest.mark.parametrize("stream", [False, True])
async def test_the_corpus_tool_calls_reach_the_sdk_as_captured(replaying: BatchRig, name: str,
                                                               stream: bool) -> None:
    assert len(TOOL_CAPTURES) == 6
    final, _ = await answer(replaying, stream, tools=TOOLS, **sdk_args(name, replay=name))
    calls = tuple((c.id, c.function.name, c.function.arguments)
                  for c in final.choices[0].message.tool_calls or [])
    assert calls == EXPECTED[name].tools
    assert final.choices[0].finish_reason == EXPECTED[name].finish


# --- privacy -------------------------------------------------------------------------------------
SECRET_ARGS = '{"api_key": "sk-live-in-tool-args-31337"}'
SECRET_IMAGE = "data:image/png;base64,U0VDUkVUSU1BR0VEQVRBLTQ0NA=="


@pytest.mark.first_store_only
async def test_logs_hold_no_tool_arguments_images_or_extras_and_the_dashboard_hides_them(
        rig: BatchRig, capsys: pytest.CaptureFixture[str]) -> None:
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": SECRET_IMAGE}}]}]
    final, task_id = await answer(rig, True, model="mock-r1", messages=messages, tools=TOOLS,
                                  metadata=tagged("private", tool_arguments=SECRET_ARGS),
                                  extra_body={"provider_secret": "extra-secret-5150"})
    assert (final.choices[0].message.tool_calls or [])[0].function.arguments == SECRET_ARGS
    await _settle(rig, task_id)
    async with await http(rig) as client:
        page = (await client.get(f"/api/admin/tasks/{task_id}")).json()
    assert page["result"]["tool_calls"][0]["function"]["arguments"] != SECRET_ARGS
    assert SECRET_ARGS.encode() not in orjson.dumps(page)
    assert "request" not in page
    out = capsys.readouterr()
    assert task_id in out.out + out.err  # the logs are captured here: their task lines
    for secret in (SECRET_ARGS, "sk-live-in-tool-args", "U0VDUkVUSU1BR0VEQVRB",
                   "extra-secret-5150"):
        assert secret not in out.out + out.err

"""Everything a client sends reaches the provider, and everything the provider answers reaches
the client: the real edge, coordinator and processor in process, the mock provider recording
what it receives, the official openai SDK (or plain HTTP on /api/tasks) as the client.

Forwarding is store-blind (first store only); the stored result is read back from each store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.harness import CLIENT_TLS
from tests.integration.batch_kit import KEY_A, BatchRig, batch_rig
from tests.integration.kit import Core, until

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
    return list(await until(bodies))


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

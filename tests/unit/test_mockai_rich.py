"""The mock's answers beyond one plain choice (tool calls, logprobs, n choices, refusal, no usage),
its request recording and its refusal of a field, over real HTTP. Each answer is read by the
official openai SDK, streamed (its own reassembly) and not, and by our assembler."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import openai
import orjson
import pytest

from services.mockai.rich import FINGERPRINT
from services.mockai.settings import ConfigError, MockSettings
from services.processor.assembler import StreamAssembler, assemble_completion
from services.processor.sse import SSEDecoder
from tests.unit.conftest import FAST, Start
from tests.unit.test_mockai import MESSAGES, body, mock, records

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {}}}]
ARGS = '{"city": "Paris", "units": "celsius"}'


def sdk(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)


def assembled(raw: bytes) -> StreamAssembler:
    decoder, asm = SSEDecoder(), StreamAssembler()
    for event in decoder.feed(raw):
        asm.add_event(event)
    return asm


@pytest.mark.parametrize("stream", [True, False])
async def test_tool_calls_split_across_chunks(base: str, client: httpx.AsyncClient,
                                              stream: bool) -> None:
    extra = {"tools": TOOLS, **mock(tool_arguments=ARGS, tool_calls=2, split=4)}
    r = await client.post(f"{base}/v1/chat/completions", json=body(stream, **extra))
    assert r.status_code == 200
    if stream:
        fragments = [e for e in r.text.split("\n\n") if '"tool_calls"' in e]
        assert len(fragments) > 2 * (len(ARGS) // 4)  # the arguments came in pieces
        asm = assembled(r.content)
        choice = asm.final()
    else:
        choices, _ = assemble_completion(r.content)
        choice = choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(t.name, t.arguments, t.type) for t in choice.tool_calls] == [
        ("get_weather", ARGS, "function"), ("get_time", ARGS, "function")]
    assert all(t.id and t.id.startswith("call_") for t in choice.tool_calls)

    ai = sdk(base)
    kwargs: dict[str, Any] = {"model": "mock-r1", "messages": MESSAGES, "tools": TOOLS,
                              "extra_body": mock(tool_arguments=ARGS, tool_calls=2, split=4)}
    if stream:
        async with ai.chat.completions.stream(**kwargs) as s:
            final = await s.get_final_completion()
    else:
        final = await ai.chat.completions.create(**kwargs)
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls or []] == [
        ("get_weather", ARGS), ("get_time", ARGS)]
    assert final.system_fingerprint == FINGERPRINT


async def test_a_tool_result_turns_the_answer_into_text(base: str,
                                                        client: httpx.AsyncClient) -> None:
    turn = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": ARGS}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}]
    r = await client.post(f"{base}/v1/chat/completions",
                          json={**body(False), "messages": turn, "tools": TOOLS})
    message = r.json()["choices"][0]
    assert message["finish_reason"] == "stop" and message["message"]["content"]
    assert "tool_calls" not in message["message"]
    r = await client.post(f"{base}/v1/chat/completions",
                          json={**body(False), "tools": TOOLS, "tool_choice": "none"})
    assert r.json()["choices"][0]["finish_reason"] == "stop"


async def test_tool_arguments_default_to_the_setting(start: Start,
                                                     client: httpx.AsyncClient) -> None:
    """MOCKAI_TOOL_ARGUMENTS: the arguments of a call when the request asks for none (a client
    such as the Codex CLI cannot); metadata.mock.tool_arguments still wins. Not JSON: refused."""
    base = await start(dataclasses.replace(FAST, tool_arguments=ARGS))
    for extra, expected in (({}, ARGS), (mock(tool_arguments='{"a": 1}'), '{"a": 1}')):
        r = await client.post(f"{base}/v1/chat/completions",
                              json=body(False, tools=TOOLS, **extra))
        [call] = r.json()["choices"][0]["message"]["tool_calls"]
        assert call["function"]["arguments"] == expected
    # The records say what was answered: calls, not the plain answer's "stop".
    assert [r["finish_reason"] for r in await records(client, base)] == ["tool_calls"] * 2
    assert MockSettings.from_env({"MOCKAI_TOOL_ARGUMENTS": ARGS}).tool_arguments == ARGS
    with pytest.raises(ConfigError, match="MOCKAI_TOOL_ARGUMENTS"):
        MockSettings.from_env({"MOCKAI_TOOL_ARGUMENTS": "[1]"})


@pytest.mark.parametrize("stream", [True, False])
async def test_logprobs_and_n_choices(base: str, stream: bool) -> None:
    ai = sdk(base)
    kwargs: dict[str, Any] = {"model": "mock-r1", "messages": MESSAGES, "n": 3,
                              "logprobs": True, "top_logprobs": 2,
                              "extra_body": mock(reasoning_tokens=0, content_tokens=6)}
    if stream:
        async with ai.chat.completions.stream(**kwargs) as s:
            final = await s.get_final_completion()
    else:
        final = await ai.chat.completions.create(**kwargs)
    assert [c.index for c in final.choices] == [0, 1, 2]
    texts = [c.message.content for c in final.choices]
    assert len(set(texts)) == 3 and all(texts)
    for c in final.choices:
        assert c.logprobs is not None and c.logprobs.content is not None
        assert "".join(t.token for t in c.logprobs.content) == c.message.content
        assert all(len(t.top_logprobs) == 2 for t in c.logprobs.content)
    assert final.usage is not None and final.usage.completion_tokens == 18


async def test_refusal_and_no_usage(base: str, client: httpx.AsyncClient) -> None:
    r = await client.post(f"{base}/v1/chat/completions",
                          json=body(True, stream_options={"include_usage": True},
                                    **mock(refusal="I can't help with that.", usage=False)))
    asm = assembled(r.content)
    assert asm.final().refusal == "I can't help with that." and asm.usage is None
    assert '"usage"' not in r.text


async def test_records_the_body_when_asked(start: Start, client: httpx.AsyncClient) -> None:
    base = await start()
    sent = body(False, seed=7, top_k=20, **mock(record=True, tag="rec"))
    await client.post(f"{base}/v1/chat/completions", json=sent)
    await client.post(f"{base}/v1/chat/completions", json=body(False, **mock(tag="plain")))
    assert [r["body"] for r in await records(client, base, "rec")] == [sent]
    assert [r["body"] for r in await records(client, base, "plain")] == [None]
    every = await start(MockSettings(ttft_ms=0, tokens_per_s=0, record_bodies=True))
    await client.post(f"{every}/v1/chat/completions", json=body(False, user="u1"))
    assert (await records(client, every))[0]["body"]["user"] == "u1"


async def test_refuses_a_field_it_is_told_to(start: Start, client: httpx.AsyncClient) -> None:
    base = await start(MockSettings(ttft_ms=0, tokens_per_s=0, reject_params=("top_k",)))
    r = await client.post(f"{base}/v1/chat/completions", json=body(False, top_k=3))
    assert r.status_code == 400
    assert r.json()["error"] == {"message": "Unrecognized request argument supplied: top_k",
                                 "type": "invalid_request_error", "param": "top_k",
                                 "code": None}
    r = await client.post(f"{base}/v1/chat/completions",
                          json=body(False, seed=1, **mock(reject=["seed"])))
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"
    r = await client.post(f"{base}/v1/chat/completions", json=body(False))
    assert r.status_code == 200
    assert orjson.loads(r.content)["choices"][0]["finish_reason"] == "stop"

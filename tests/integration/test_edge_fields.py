"""Fields the edge used to mangle or choke on: deep and wide JSON, a non-ASCII digit in a query,
tool calls in messages, and models outside AI_MODELS. Each is kept exactly or refused with a
4xx naming the field, never a 500 and never silently changed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.edge.settings import EdgeSettings
from services.processor.provider import request_body
from shared.config import ConfigError, Env
from tests.integration.edge_client import EdgeUnderTest, running_edge
from tests.integration.test_edge_validation import AUTH, KEY, assert_nothing_stored

PATHS = ["/api/tasks", "/v1/chat/completions"]


@pytest.fixture
async def edge(redis_url: str, tmp_path: Path) -> AsyncIterator[EdgeUnderTest]:
    async with running_edge(redis_url, tmp_path, EDGE_API_KEYS=f"{KEY}:alpha",
                            AI_MODEL="mock-r1", AI_MODELS="mock-r1, mock-fast") as e:
        yield e


async def stored_request(edge: EdgeUnderTest, task_id: str) -> dict[str, Any]:
    raw = await edge.redis.hget(f"{{{edge.prefix}}}:task:{task_id}", "request")
    return dict(orjson.loads(raw))


async def post(edge: EdgeUnderTest, path: str, body: dict[str, Any] | bytes) -> Any:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return await edge.client.post(path, data=data,
                                  headers={**AUTH, "Content-Type": "application/json"})


def nested(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


def messages_with(metadata: bytes) -> bytes:
    return b'{"messages": [{"role": "user", "content": "x"}], "metadata": ' + metadata + b"}"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("levels", [250, 1000])
async def test_metadata_nested_too_deep_is_422_naming_it(
        redis_url: str, tmp_path: Path, path: str, levels: int) -> None:
    async with running_edge(redis_url, tmp_path, MAX_METADATA_BYTES="100000") as edge:
        r = await edge.client.post(path, data=messages_with(nested(levels)),
                                   headers={"Content-Type": "application/json"})
        body = await r.json()
        assert r.status == 422, body
        assert "metadata" in str(body["error"].get("field") or body["error"].get("param"))
        await assert_nothing_stored(edge)
        # 64 levels (metadata itself the first) is the deepest accepted.
        r = await edge.client.post("/api/tasks", data=messages_with(nested(64)),
                                   headers={"Content-Type": "application/json"})
        assert r.status == 202, await r.text()
        r = await edge.client.post("/api/tasks", data=messages_with(nested(65)),
                                   headers={"Content-Type": "application/json"})
        assert r.status == 422


@pytest.mark.parametrize("limit", ["\u00b2", "\u0663", "1\u00b9", "9" * 5000, "-1", "0", "501",
                                   " 5"])
async def test_a_limit_that_is_not_ascii_digits_in_range_is_422(edge: EdgeUnderTest,
                                                                limit: str) -> None:
    r = await edge.client.get("/api/dead-letters", params={"limit": limit}, headers=AUTH)
    assert r.status == 422, await r.text()
    assert (await r.json())["error"]["field"] == "limit"


async def test_a_limit_in_range_is_read(edge: EdgeUnderTest) -> None:
    r = await edge.client.get("/api/dead-letters", params={"limit": "500"}, headers=AUTH)
    assert r.status == 200 and (await r.json()) == {"data": []}


@pytest.mark.parametrize("path", PATHS)
async def test_integers_are_kept_exactly_or_refused(edge: EdgeUnderTest, path: str) -> None:
    edge_ints = [(1 << 64) - 1, -(1 << 63), 12345678901234567890, 0]
    digits = "123456789012345678901234567890"  # in a string: not a number, kept as it is
    body = {"messages": [{"role": "user", "content": digits}],
            "metadata": {"n": edge_ints, "s": digits, "f": [0.5, -9e18, 1.8e19]}}
    r = await post(edge, path, {**body, "stream": True} if path.startswith("/v1") else body)
    assert r.status in (200, 202)
    task_id = r.headers.get("X-Sluice-Task-Id") or (await r.json())["id"]
    r.close()  # no processor runs here: the stream would wait for ever
    assert (await stored_request(edge, task_id))["metadata"] == body["metadata"]
    for wide, field in (("18446744073709551616", "metadata.n"),
                        ("-9223372036854775809", "metadata.n"),
                        ("1" * 400, "metadata.n"), ("[1, 2, 99999999999999999999]",
                                                    "metadata.n[2]"),
                        ("1e300", "metadata.n"), ("[0.5, {\"x\": -2e19}]", "metadata.n[1].x")):
        data = (b'{"messages": [{"role": "user", "content": "x"}], "metadata": {"n": '
                + wide.encode() + b"}}")
        r = await post(edge, path, data)
        err = (await r.json())["error"]
        assert r.status == 422, err
        assert (err.get("field") or err.get("param")) == field
    r = await post(edge, path, b'{"messages": [{"role": "user", "content": "x"}], '
                               b'"max_tokens": 100000000000000000000}')
    assert r.status == 422
    # Forwarded members are the provider's to check: 64-bit integers are kept exactly, a
    # wider one goes on as JSON reads it (its float value), not refused (only metadata, which
    # Sluice keeps, promises integers within 64 bits).
    r = await post(edge, path, b'{"messages": [{"role": "user", "content": "x", "extra": '
                               b'18446744073709551615}], "seed": -9223372036854775808, '
                               b'"logit_bias": {"5": 99999999999999999999}, "stream": true}')
    assert r.status in (200, 202)
    task_id = r.headers.get("X-Sluice-Task-Id") or (await r.json())["id"]
    r.close()
    stored = await stored_request(edge, task_id)
    assert (stored["seed"], stored["messages"][0]["extra"]) == (-(1 << 63), (1 << 64) - 1)
    assert stored["logit_bias"] == {"5": 1e20}


TOOL_CONVERSATION = [
    {"role": "user", "content": "weather in Paris?", "name": "alice"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, clear"},
    {"role": "assistant", "content": "Sunny, 18 C.", "tool_calls": [
        {"id": "call_2", "type": "function", "function": {"name": "log", "arguments": ""}}]},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "ok"}]},
]


@pytest.mark.parametrize("path", PATHS)
async def test_tool_calls_and_tool_call_ids_reach_the_provider(edge: EdgeUnderTest,
                                                              path: str) -> None:
    r = await post(edge, path, {"messages": TOOL_CONVERSATION, "stream": True}
                   if path.startswith("/v1") else {"messages": TOOL_CONVERSATION})
    assert r.status in (200, 202), await r.text()
    task_id = r.headers.get("X-Sluice-Task-Id") or (await r.json())["id"]
    r.close()
    stored = await stored_request(edge, task_id)
    assert stored["messages"] == TOOL_CONVERSATION
    sent = orjson.loads(request_body(stored, edge.settings.provider))
    assert sent["messages"] == TOOL_CONVERSATION


def _with(index: int, **changes: Any) -> list[dict[str, Any]]:
    msgs = [dict(m) for m in TOOL_CONVERSATION[:3]]
    msgs[index] = {k: v for k, v in {**msgs[index], **changes}.items() if v != "DROP"}
    return msgs


def _call(**changes: Any) -> list[dict[str, Any]]:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": "{}"}, **changes}
    return _with(1, tool_calls=[{k: v for k, v in call.items() if v != "DROP"}])


BAD_TOOLS: list[tuple[list[dict[str, Any]], str]] = [
    (_with(0, tool_calls=[]), "messages[0].tool_calls"),
    (_with(1, tool_calls=[]), "messages[1].tool_calls"),
    (_with(1, tool_calls={"id": "x"}), "messages[1].tool_calls"),
    (_with(1, tool_calls=["call"]), "messages[1].tool_calls[0]"),
    (_call(id=""), "messages[1].tool_calls[0].id"),
    (_call(id="DROP"), "messages[1].tool_calls[0].id"),
    (_call(type="code"), "messages[1].tool_calls[0].type"),
    (_call(function="f"), "messages[1].tool_calls[0].function"),
    (_call(function={"name": "", "arguments": "{}"}), "messages[1].tool_calls[0].function.name"),
    (_call(function={"name": "f", "arguments": {"a": 1}}),
     "messages[1].tool_calls[0].function.arguments"),
    (_with(1, content="DROP", tool_calls="DROP"), "messages[1].content"),
    (_with(2, tool_call_id="DROP"), "messages[2].tool_call_id"),
    (_with(2, tool_call_id=""), "messages[2].tool_call_id"),
    (_with(2, tool_call_id=5), "messages[2].tool_call_id"),
    (_with(0, tool_call_id="call_1"), "messages[0].tool_call_id"),
    (_with(2, content=None), "messages[2].content"),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("messages", "field"), BAD_TOOLS, ids=[f for _, f in BAD_TOOLS])
async def test_malformed_tool_messages_are_422_naming_the_field(
        edge: EdgeUnderTest, path: str, messages: list[dict[str, Any]], field: str) -> None:
    r = await post(edge, path, {"messages": messages})
    err = (await r.json())["error"]
    assert r.status == 422, err
    assert (err.get("field") or err.get("param")) == field, err
    await assert_nothing_stored(edge)


async def test_models_listed_in_ai_models_are_served_and_others_are_not_found(
        edge: EdgeUnderTest) -> None:
    r = await edge.client.get("/v1/models", headers=AUTH)
    assert [m["id"] for m in (await r.json())["data"]] == ["mock-r1", "mock-fast"]
    r = await post(edge, "/api/tasks", {"prompt": "x", "model": "mock-fast"})
    assert r.status == 202
    assert (await stored_request(edge, (await r.json())["id"]))["model"] == "mock-fast"
    before = await edge.redis_keys()

    r = await post(edge, "/v1/chat/completions",
                   {"model": "gpt-nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status == 404
    assert (await r.json()) == {"error": {
        "message": "The model `gpt-nope` does not exist or you do not have access to it.",
        "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}
    r = await post(edge, "/api/tasks", {"prompt": "x", "model": "gpt-nope"})
    err = (await r.json())["error"]
    assert r.status == 422 and err["code"] == "model_not_found" and err["field"] == "model"
    for path in PATHS:
        for bad in ("mock-r1\x00", "mock\x1b[31m", "\x7f"):
            r = await post(edge, path, {"messages": [{"role": "user", "content": "x"}],
                                        "model": bad})
            err = (await r.json())["error"]
            assert r.status == 422 and err["code"] == "invalid_request", err
            assert bad not in err["message"]
    assert await edge.redis_keys() == before


def test_ai_models_is_checked_at_start() -> None:
    assert EdgeSettings.from_env(Env({"AI_MODEL": "a"})).models == ("a",)
    assert EdgeSettings.from_env(Env({"AI_MODEL": "a", "AI_MODELS": "b,a, b"})).models == (
        "b", "a")
    with pytest.raises(ConfigError, match="AI_MODELS: must include AI_MODEL"):
        EdgeSettings.from_env(Env({"AI_MODEL": "a", "AI_MODELS": "b,c"}))
    with pytest.raises(ConfigError, match="AI_MODELS"):
        EdgeSettings.from_env(Env({"AI_MODEL": "a", "AI_MODELS": "a,b\x00c"}))

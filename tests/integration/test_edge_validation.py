"""Bad input at the edge: the right 4xx, naming the field, and nothing left behind.

The real app (``create_app``) against the session's redis-server; every test has a key prefix
and a SQLite file of its own, so "nothing in Redis, nothing in the store" is checked exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.edge_client import EdgeUnderTest, running_edge

KEY = "key-validation-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = {"MAX_MESSAGES": "3", "MAX_TEXT_CHARS": "100", "MAX_TOKENS_LIMIT": "1000",
          "MAX_METADATA_BYTES": "64", "MAX_BODY_BYTES": str(1 << 20)}
MIB = 1 << 20


@pytest.fixture
async def edge(redis_url: str, tmp_path: Path) -> AsyncIterator[EdgeUnderTest]:
    async with running_edge(redis_url, tmp_path, EDGE_API_KEYS=f"{KEY}:alpha", **LIMITS) as e:
        yield e


async def assert_nothing_stored(edge: EdgeUnderTest) -> None:
    assert await edge.redis_keys() == []
    assert edge.store_rows("tasks") == 0
    assert edge.store_rows("idempotency_keys") == 0


def msgs(*texts: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": t} for t in texts]


# body -> the field the 422 must name; limits are those of LIMITS above.
INVALID: list[tuple[dict[str, Any], str]] = [
    ({}, "messages"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "x", "messages": msgs("x")}, "prompt"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"url": "x"}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": "x", "name": ""}]}, "messages[0].name"),
    ({"messages": [{"role": "user", "content": "x", "name": 7}]}, "messages[0].name"),
    ({"prompt": "x", "model": ""}, "model"),
    ({"prompt": "x", "model": 3}, "model"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
    ({"prompt": "x", "temperature": 2.5}, "temperature"),
    ({"prompt": "x", "top_p": -0.1}, "top_p"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "x", "stop": ""}, "stop"),
    ({"prompt": "x", "metadata": [1]}, "metadata"),
    ({"prompt": "x", "deadline": 0}, "deadline"),
    ({"prompt": "x", "deadline": -5}, "deadline"),
    ({"prompt": "x", "deadline": True}, "deadline"),
    ({"prompt": "x", "deadline": "tomorrow"}, "deadline"),
    ({"prompt": "x", "deadline": "2099-01-01T00:00:00"}, "deadline"),
    ({"prompt": "x", "deadline": 31 * 86_400}, "deadline"),
    # the limits
    ({"messages": msgs("a", "b", "c", "d")}, "messages"),
    ({"prompt": "x" * 101}, "prompt"),
    ({"messages": msgs("x" * 60, "y" * 60)}, "messages"),
    ({"prompt": "x", "max_tokens": 1001}, "max_tokens"),
    ({"prompt": "x", "metadata": {"k": "v" * 60}}, "metadata"),
]


@pytest.mark.parametrize(("body", "field"), INVALID, ids=[f for _, f in INVALID])
async def test_schema_violations_name_the_field_and_store_nothing(
        edge: EdgeUnderTest, body: dict[str, Any], field: str) -> None:
    r = await edge.client.post("/api/tasks", json=body, headers=AUTH)
    err = (await r.json())["error"]
    assert r.status == 422, err
    assert err["code"] == "invalid_request" and err["field"] == field
    assert err["message"].startswith(field)
    await assert_nothing_stored(edge)


# OpenAI has no prompt: the same faults, carried next to a valid message.
V1_INVALID = [({**{k: v for k, v in b.items() if k != "prompt"}, "messages": msgs("x")}
               if "prompt" in b else b, f) for b, f in INVALID[1:] if f != "prompt"]


@pytest.mark.parametrize(("body", "field"), V1_INVALID, ids=[f for _, f in V1_INVALID])
async def test_openai_route_answers_the_same_violations_in_openai_shape(
        edge: EdgeUnderTest, body: dict[str, Any], field: str) -> None:
    r = await edge.client.post("/v1/chat/completions", json=body, headers=AUTH)
    err = (await r.json())["error"]
    assert r.status == 422, err
    assert err["type"] == "invalid_request_error" and err["param"] == field
    await assert_nothing_stored(edge)


async def test_unknown_top_level_field_is_refused_on_api_tasks(edge: EdgeUnderTest) -> None:
    r = await edge.client.post("/api/tasks", json={"prompt": "x", "promt": "typo"},
                               headers=AUTH)
    assert r.status == 422
    assert (await r.json())["error"]["field"] == "promt"
    await assert_nothing_stored(edge)


async def test_unknown_top_level_fields_are_kept_on_v1(edge: EdgeUnderTest) -> None:
    body = {"messages": msgs("hello"), "n": 1, "tools": [], "seed": 7, "whatever": {"a": 1},
            "stream": True}
    async with edge.client.post("/v1/chat/completions", json=body, headers=AUTH) as r:
        assert r.status == 200, await r.text()
        task_id = r.headers["X-Sluice-Task-Id"]
        assert (await r.content.readline()).startswith(b"data: ")  # the role chunk
        request = orjson.loads(await edge.redis.hget(f"{{{edge.prefix}}}:task:{task_id}",
                                                     "request"))
        assert request == {**body, "model": "mock-r1"}  # forwarded as given
        # No processor runs here: cancelling the queued task ends the stream.
        assert (await edge.client.delete(f"/api/tasks/{task_id}", headers=AUTH)).status == 200
        rest = await r.read()
    assert b'"code":"cancelled"' in rest


async def test_limits_are_inclusive(edge: EdgeUnderTest) -> None:
    for body in ({"messages": msgs("a", "b", "c")}, {"prompt": "x" * 100},
                 {"messages": msgs("x" * 50, "y" * 50)},
                 {"prompt": "x", "max_tokens": 1000}, {"prompt": "x", "max_tokens": 8.0},
                 {"prompt": "x", "metadata": {"k": "v" * 55}},
                 {"prompt": "x", "model": None, "max_tokens": None, "temperature": None,
                  "top_p": None, "stop": None, "metadata": None}):
        assert len(orjson.dumps(body.get("metadata"))) <= 64
        r = await edge.client.post("/api/tasks", json=body, headers=AUTH)
        assert r.status == 202, (body, await r.text())
    assert edge.store_rows("tasks") == 0  # the store gets a row when the task ends


@pytest.mark.parametrize("path", ["/api/tasks", "/v1/chat/completions"])
async def test_not_json_is_400_and_wrong_type_is_415(edge: EdgeUnderTest, path: str) -> None:
    cases = [(b"{not json", "application/json", 400), (b"", "application/json", 400),
             (b'{"prompt": "\\ud800"}', "application/json", 400),
             (b"[" * 5000 + b"]" * 5000, "application/json", 400),
             (b'{"prompt": "x"}', "text/plain", 415),
             (b'{"prompt": "x"}', "application/x-www-form-urlencoded", 415),
             (b'{"prompt": "x"}', None, 415)]
    for data, ctype, status in cases:
        headers = {**AUTH, **({"Content-Type": ctype} if ctype else {})}
        r = await edge.client.post(path, data=data, headers=headers,
                                   skip_auto_headers=["Content-Type"])
        body = await r.json()
        assert r.status == status, (data[:20], ctype, body)
        assert "message" in body["error"]
    for body in (b'"a string"', b"42", b'["list"]', b"null"):
        r = await edge.client.post(path, data=body, headers={
            **AUTH, "Content-Type": "application/json"})
        assert r.status == 422, body
    await assert_nothing_stored(edge)


def _big_body(size: int) -> bytes:
    return b'{"prompt": "' + b"x" * size + b'"}'


async def _chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("path", ["/api/tasks", "/v1/chat/completions"])
async def test_2_mib_body_is_413_with_and_without_content_length(
        edge: EdgeUnderTest, path: str) -> None:
    data = _big_body(2 * MIB)
    r = await edge.client.post(path, data=data, headers={**AUTH, "Content-Type":
                                                         "application/json"})
    assert r.status == 413 and r.request_info.headers["Content-Length"] == str(len(data))
    r = await edge.client.post(path, data=_chunks(data), headers={
        **AUTH, "Content-Type": "application/json"})
    assert r.status == 413, await r.text()
    assert r.request_info.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in r.request_info.headers
    err = (await r.json())["error"]
    assert err["code"] == "body_too_large"
    await assert_nothing_stored(edge)


async def test_413_comes_before_the_body_ends(edge: EdgeUnderTest) -> None:
    """A chunked body that never ends: the edge answers 413 once it has seen one byte too
    many, so it cannot have buffered the body to its end first."""
    server = edge.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + KEY.encode() + b"\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        for _ in range((MIB // len(chunk)) + 2):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()  # and no terminating chunk: the body never ends
        status_line = await asyncio.wait_for(reader.readline(), 30)
        assert status_line.startswith(b"HTTP/1.1 413"), status_line
    finally:
        writer.close()
    await assert_nothing_stored(edge)


async def test_body_within_the_limit_is_read(redis_url: str, tmp_path: Path) -> None:
    async with running_edge(redis_url, tmp_path, MAX_BODY_BYTES=str(4096),
                            MAX_TEXT_CHARS="100000") as edge:
        ok = _big_body(4096 - 20)
        r = await edge.client.post("/api/tasks", data=_chunks(ok, 1000),
                                   headers={"Content-Type": "application/json"})
        assert r.status == 202, await r.text()
        r = await edge.client.post("/api/tasks", data=_chunks(_big_body(4096), 1000),
                                   headers={"Content-Type": "application/json"})
        assert r.status == 413


@pytest.mark.parametrize("value", ["", " ", "x" * 256, "caf\u00e9"])
async def test_bad_idempotency_key_is_422(edge: EdgeUnderTest, value: str) -> None:
    headers = {**AUTH, "Idempotency-Key": value}
    r = await edge.client.post("/api/tasks", json={"prompt": "x"}, headers=headers)
    assert r.status == 422
    assert (await r.json())["error"]["field"] == "Idempotency-Key"
    await assert_nothing_stored(edge)


async def test_idempotency_conflict_leaves_only_the_first_task(edge: EdgeUnderTest) -> None:
    headers = {**AUTH, "Idempotency-Key": "order 42"}
    first = await edge.client.post("/api/tasks", json={"prompt": "x"}, headers=headers)
    assert first.status == 202
    task_keys = [k for k in await edge.redis_keys() if ":task:" in k]
    again = await edge.client.post("/api/tasks", json={"prompt": "x"}, headers=headers)
    assert again.status == 202 and (await again.json())["id"] == (await first.json())["id"]
    other = await edge.client.post("/api/tasks", json={"prompt": "y"}, headers=headers)
    assert other.status == 409
    assert [k for k in await edge.redis_keys() if ":task:" in k] == task_keys


async def test_method_not_allowed_says_which_are(edge: EdgeUnderTest) -> None:
    r = await edge.client.patch("/api/tasks", json={}, headers=AUTH)
    assert r.status == 405
    assert r.headers["Allow"] == "POST"
    assert (await r.json())["error"]["code"] == "method_not_allowed"


async def test_a_deadline_is_kept_and_indexed_for_the_sweep(edge: EdgeUnderTest) -> None:
    ids = []
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(days=10)
    for deadline in (2, 0.5, at.isoformat().replace("+00:00", "Z")):
        r = await edge.client.post("/api/tasks", json={"prompt": "x", "deadline": deadline},
                                   headers=AUTH)
        assert r.status == 202, await r.text()
        ids.append((await r.json())["id"])
    keys = [k for k in await edge.redis_keys() if k.endswith(":deadlines")]
    assert len(keys) == 1
    scored = dict(await edge.redis.zrange(keys[0], 0, -1, withscores=True))
    assert set(scored) == set(ids)
    assert scored[ids[2]] == at.timestamp() * 1000
    assert scored[ids[1]] < scored[ids[0]] < scored[ids[2]]

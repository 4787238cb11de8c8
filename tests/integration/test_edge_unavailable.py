"""A 503 says what it knows: when Redis did not answer a submit in time, the task may have been
stored (the script was sent), and the answer says so; when the submit never reached Redis, the
answer says nothing was stored.

A redis-server of the test's own, made slow with ``DEBUG SLEEP`` past the edge's Redis timeout
(EDGE_REDIS_TIMEOUT_S, 10 s by default, 1 s here): the submit times out at the edge, then runs
when Redis wakes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from harness.processes import RedisServer
from harness.redis_sleep import debug_redis, put_to_sleep
from harness.waiting import until
from tests.integration.edge_client import EdgeUnderTest, running_edge

KEY = "sk-unavailable-alpha"
AUTH = {"Authorization": f"Bearer {KEY}"}
TIMEOUT_S = 1  # EDGE_REDIS_TIMEOUT_S: how long the edge waits for Redis's answer
SLEEP_S = 3  # past it

pytestmark = pytest.mark.first_store_only


@pytest.fixture
def slow_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    with debug_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def edge(slow_redis: RedisServer, tmp_path: Path) -> AsyncIterator[EdgeUnderTest]:
    async with running_edge(slow_redis.url, tmp_path, EDGE_API_KEYS=f"{KEY}:alpha",
                            EDGE_REDIS_TIMEOUT_S=str(TIMEOUT_S)) as e:
        yield e


async def _task_keys(edge: EdgeUnderTest) -> list[str]:
    return [k for k in await edge.redis_keys() if ":task:" in k]


async def test_a_submit_redis_did_not_answer_in_time_says_the_outcome_is_unknown(
        edge: EdgeUnderTest, slow_redis: RedisServer) -> None:
    r = await edge.client.post("/api/tasks", json={"prompt": "warm up"}, headers=AUTH)
    assert r.status == 202, await r.text()
    before = await _task_keys(edge)
    sleeper = await put_to_sleep(slow_redis, SLEEP_S)
    try:
        r = await edge.client.post("/api/tasks", json={"prompt": "during the sleep"},
                                   headers=AUTH)
        assert r.status == 503, await r.text()
        error = (await r.json())["error"]
        assert error["code"] == "unavailable"
        assert error["outcome"] == "unknown", error
        assert "may have been stored" in error["message"]
        assert "send an Idempotency-Key" in error["message"], error
    finally:
        sleeper.close()
    # Redis woke and ran the script the edge had sent: the task the 503 answered exists, so
    # "unknown" was the truth (a blind retry would have made a second one).
    async def woke_and_ran() -> bool:
        return len(await _task_keys(edge)) > len(before)
    await until(woke_and_ran, 30, "woke and ran")
    assert len(await _task_keys(edge)) == len(before) + 1


async def test_with_an_idempotency_key_the_message_says_a_retry_is_safe(
        edge: EdgeUnderTest, slow_redis: RedisServer) -> None:
    r = await edge.client.post("/api/tasks", json={"prompt": "warm up"}, headers=AUTH)
    assert r.status == 202
    sleeper = await put_to_sleep(slow_redis, SLEEP_S)
    try:
        r = await edge.client.post("/v1/chat/completions", headers={
            **AUTH, "Idempotency-Key": "retry-me-1"}, json={
            "model": "mock-r1", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status == 503, await r.text()
        error = (await r.json())["error"]
        assert error["code"] == "unavailable" and error["outcome"] == "unknown", error
        assert "same Idempotency-Key" in error["message"], error
    finally:
        sleeper.close()


async def test_a_submit_that_never_reached_redis_says_nothing_was_stored(
        edge: EdgeUnderTest, slow_redis: RedisServer) -> None:
    r = await edge.client.post("/api/tasks", json={"prompt": "warm up"}, headers=AUTH)
    assert r.status == 202
    before = await _task_keys(edge)
    slow_redis.kill()
    r = await edge.client.post("/api/tasks", json={"prompt": "while down"}, headers=AUTH)
    assert r.status == 503, await r.text()
    error = (await r.json())["error"]
    assert error["code"] == "unavailable" and error["outcome"] == "not_stored", error
    assert "nothing was stored" in error["message"]
    slow_redis.start()
    fresh = aioredis.Redis.from_url(slow_redis.url, decode_responses=True)
    try:
        edge.redis = fresh
        assert await _task_keys(edge) == before
    finally:
        await fresh.aclose()

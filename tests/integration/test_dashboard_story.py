"""The dashboard's task page: a timeline of status changes and attempts with their times, the
processor and latency of each attempt, the failed attempt's error, for tasks run here."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from harness.providers import two_providers_file
from services.mockai.app import create_app
from services.mockai.settings import MockSettings
from shared.keys import Keys
from shared.redis_conn import RedisClient
from shared.steps import Steps
from shared.store import make_store
from tests.integration.edge_client import EdgeUnderTest, running_edge
from tests.integration.kit import Core
from tests.integration.test_routes import outage, processor

KEY, ADMIN = "sk-story-acme", "sk-story-admin"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
pytestmark = pytest.mark.first_store_only


@pytest.fixture
async def pipeline(redis_url: str, redis: RedisClient, tmp_path: Path, mock_url: str
                   ) -> AsyncIterator[tuple[EdgeUnderTest, Core]]:
    async with running_edge(redis_url, tmp_path, EDGE_API_KEYS=f"{KEY}:acme",
                            EDGE_ADMIN_KEYS=ADMIN) as edge:
        keys = Keys(edge.prefix)
        store = make_store(str(edge.store_path))
        await store.open()
        core = Core(redis_url=redis_url, redis=redis, keys=keys, steps=Steps(redis, keys),
                    store=store, mock_url=mock_url)
        try:
            yield edge, core
        finally:
            await core.close()
            await store.close()


async def page(edge: EdgeUnderTest, task_id: str, key: str = ADMIN) -> dict[str, Any]:
    r = await edge.client.get(f"/api/admin/tasks/{task_id}",
                              headers={"Authorization": f"Bearer {key}"})
    assert r.status == 200, await r.text()
    return dict(await r.json())


async def submit(edge: EdgeUnderTest, mock: dict[str, Any]) -> str:
    r = await edge.client.post("/api/tasks", headers={"Authorization": f"Bearer {KEY}"},
                               json={"prompt": "hi", "metadata": {"mock": mock}})
    assert r.status == 202, await r.text()
    return str((await r.json())["id"])


async def test_a_retried_and_a_failed_task_tell_their_story(
        pipeline: tuple[EdgeUnderTest, Core]) -> None:
    edge, core = pipeline
    retried = await submit(edge, {"content_tokens": 3, "fault": {
        "key": uuid.uuid4().hex, "status": 500, "times": 1}})
    failed = await submit(edge, {"fault": {"key": uuid.uuid4().hex, "status": 400}})
    waiting = await page(edge, retried)
    assert waiting["queue_position"] == 1 and waiting["waiting_for"]["reason"] == "coordinator"
    assert [s["event"] for s in waiting["timeline"]] == ["status queued"]
    await core.burst(core.processor("p-story", MAX_ATTEMPTS="2", RETRY_BASE_S="0.01"))

    told = await page(edge, retried)
    events = [s["event"] for s in told["timeline"]]
    # Each recorded provider call is a step at its end (the first token of the answer with
    # it: the answer came whole, so the stream got it only after the call ended).
    assert events == ["status queued", "status batched", "status running",
                      "attempt 1 on default (mock-r1): failed",
                      "attempt 2 started (the previous one failed)",
                      "attempt 2 on default (mock-r1): succeeded", "status succeeded"], events
    assert all(ISO.match(s["at"]) for s in told["timeline"])
    assert all(ISO.match(e["at"]) for e in told["events"])
    since = [s["since_submit_ms"] for s in told["timeline"]]
    assert since == sorted(since) and since[0] >= 0
    first, second = told["attempts"]
    # Both calls were recorded: each names its processor (before, only the last run's was
    # known) and its error.
    assert (first["number"], first["outcome"], first["processor"]) == (1, "failed, retried",
                                                                         "p-story")
    assert first["error"]["code"] == "http_500" and first["provider"] == "default"
    assert second["number"] == 2 and second["outcome"] == "succeeded"
    assert second["processor"] == "p-story" and second["first_token_ms"] is not None
    assert all(a["latency_ms"] >= 0 for a in told["attempts"])
    assert (second["provider"], second["model"], second["error"]) == ("default", "mock-r1", None)

    gone = await page(edge, failed)
    assert gone["status"] == "failed" and gone["result"] is None
    [only] = gone["attempts"]
    assert only["outcome"] == "failed" and only["error"]["code"] == "http_400"
    assert gone["timeline"][-1]["error"]["code"] == "http_400"
    # A tenant's key reads the same story without process names.
    mine = await page(edge, retried, KEY)
    assert [a["processor"] for a in mine["attempts"]] == [None, None]


async def test_each_attempt_on_the_timeline_names_its_provider_and_error(
        pipeline: tuple[EdgeUnderTest, Core], tmp_path: Path) -> None:
    """Two providers (PROVIDERS_FILE), the first answering 503 to everything: the task fails
    there and succeeds on the second. Its page lists both attempts, each with its provider,
    route model, processor, latency, status and (the first) error, and puts each on the
    timeline in time order."""
    edge, core = pipeline
    second = TestServer(create_app(MockSettings(ttft_ms=0, tokens_per_s=0)))
    await second.start_server()
    try:
        await outage(core.mock_url, 503)
        path = two_providers_file(tmp_path, core.mock_url, str(second.make_url("/v1")))
        task_id = await submit(edge, {"content_tokens": 3})
        await core.burst(processor(core, path, "p-two"))
    finally:
        await second.close()

    told = await page(edge, task_id)
    assert told["status"] == "succeeded"
    first, second_try = told["attempts"]
    assert (first["number"], first["provider"], first["model"], first["processor"],
            first["status"]) == (1, "a", "mock-r1", "p-two", "failed")
    assert first["error"]["status"] == 503 and "outage" in first["error"]["message"]
    assert first["outcome"] == "failed, moved on to b"
    assert (second_try["number"], second_try["provider"], second_try["processor"],
            second_try["status"], second_try["error"]) == (2, "b", "p-two", "succeeded", None)
    assert all(a["latency_ms"] >= 0 and ISO.match(a["started_at"]) for a in told["attempts"])
    assert second_try["first_token_ms"] is not None
    steps = told["timeline"]
    tried = [s for s in steps if s.get("attempt") and s.get("provider")]
    assert [(s["provider"], s["status"]) for s in tried] == [("a", "failed"), ("b", "succeeded")]
    assert tried[0]["event"] == "attempt 1 on a (mock-r1): failed"
    assert tried[0]["error"]["status"] == 503 and tried[0]["processor"] == "p-two"
    assert tried[1]["latency_ms"] >= 0
    since = [s["since_submit_ms"] for s in steps]
    assert since == sorted(since)
    assert steps[-1]["event"] == "status succeeded"
    # A tenant's key: the same story, without process names.
    mine = await page(edge, task_id, KEY)
    assert [a["provider"] for a in mine["attempts"]] == ["a", "b"]
    assert {a["processor"] for a in mine["attempts"]} == {None}
    assert {s.get("processor") for s in mine["timeline"]} == {None}
    assert {t.get("processor") for t in mine["tries"]} == {None}


async def test_a_running_task_shows_its_recorded_calls_and_the_one_on_its_way(
        pipeline: tuple[EdgeUnderTest, Core]) -> None:
    """Mid-answer after a failed call: the failed call is recorded (the hash has it at once),
    the call streaming now is an attempt `running` on the processor holding the task."""
    import asyncio

    from tests.integration.kit import mid_stream

    edge, core = pipeline
    task_id = await submit(edge, {"content_tokens": 30, "tokens_per_s": 15, "fault": {
        "key": uuid.uuid4().hex, "status": 500, "times": 1}})
    burst = asyncio.create_task(core.burst(core.processor("p-live", RETRY_BASE_S="0.01")))
    try:
        await mid_stream(core, task_id)
        told = await page(edge, task_id)
        assert told["status"] == "running", told["status"]
        first, now = told["attempts"]
        assert (first["provider"], first["status"], first["error"]["code"]) == (
            "default", "failed", "http_500")
        assert first["outcome"] == "failed, retried" and first["processor"] == "p-live"
        assert (now["number"], now["status"], now["outcome"], now["processor"]) == (
            2, "running", "running", "p-live")
        assert now["ended_at"] is None and now["latency_ms"] is None
        calls = [s["event"] for s in told["timeline"] if s.get("attempt")]
        assert calls[0] == "attempt 1 on default (mock-r1): failed", calls
        assert not any("running" in c for c in calls[1:]), calls
    finally:
        await burst

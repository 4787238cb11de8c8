"""The provider governor with real processes against a mock provider that has real limits:
a burst against a provider allowing 8 calls in flight, pacing by x-ratelimit headers, and
deadlines while the provider is paused."""

from __future__ import annotations

import itertools
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import redis

from harness.processes import Stack, running_stack
from harness.waiting import wait_for
from shared.governor import parse_duration
from shared.keys import Keys
from tests.client import Api


def tagged(tag: str, **mock: Any) -> dict[str, Any]:
    return {"prompt": f"governor {uuid.uuid4().hex[:8]}", "metadata": {"mock": {"tag": tag,
                                                                                **mock}}}


def records(stack: Stack, tag: str | None = None) -> list[dict[str, Any]]:
    params = {"tag": tag} if tag else None
    return list(httpx.get(f"{stack.mock_url}/mock/requests", params=params).json()["requests"])


def submit_all(api: Api, bodies: list[dict[str, Any]]) -> list[str]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(api.submit, bodies))


def wait_all(api: Api, ids: list[str], timeout: float) -> list[dict[str, Any]]:
    return [api.wait_terminal(t, timeout) for t in ids]


def test_burst_against_a_provider_allowing_8_in_flight(tmp_path: Path, redis_url: str,
                                                      api_factory: Any) -> None:
    """150 tasks, 3 processors at the default concurrency (32 each): nothing fails, nothing
    is dead-lettered, and at most 10% of the provider calls are refused."""
    env = {"MOCKAI_MAX_CONCURRENCY": "8", "MOCKAI_TTFT_MS": "150"}
    with running_stack(tmp_path, redis_url, processors=3, env=env) as stack:
        api = api_factory(stack.edge_url)
        tag = uuid.uuid4().hex[:8]
        ids = submit_all(api, [tagged(tag) for _ in range(150)])
        done = wait_all(api, ids, 180)
        calls = records(stack, tag)
        refused = [c for c in calls if c["status"] == 429]
        print(f"burst: {len(calls)} calls for 150 tasks, {len(refused)} refused (429)")
        assert [t["status"] for t in done] == ["succeeded"] * 150
        assert all(t["attempts"] == 1 for t in done)  # a 429 is a wait, not an attempt
        assert len(refused) <= 0.10 * len(calls)
        dead = httpx.get(f"{stack.edge_url}/api/dead-letters").json()["data"]
        assert dead == []


def test_rate_limit_headers_pace_calls_until_their_reset(tmp_path: Path, redis_url: str,
                                                        api_factory: Any) -> None:
    """The provider allows 3 requests per 2 s window and says so in x-ratelimit-* headers:
    after an answer with remaining-requests 0 and a reset of r, no call reaches it for r (but
    for calls already on their way when that answer came: 50 ms of slack)."""
    env = {"MOCKAI_RPM": "3", "MOCKAI_RATE_WINDOW_S": "2", "MOCKAI_RATELIMIT_HEADERS": "true",
           "MOCKAI_TTFT_MS": "20"}
    with running_stack(tmp_path, redis_url, processors=2, env=env) as stack:
        api = api_factory(stack.edge_url)
        tag = uuid.uuid4().hex[:8]
        ids = submit_all(api, [tagged(tag) for _ in range(9)])
        done = wait_all(api, ids, 60)
        calls = sorted(records(stack, tag), key=lambda c: c["started_monotonic"])
        assert [t["status"] for t in done] == ["succeeded"] * 9
        spent = [c for c in calls if c["ratelimit"].get("x-ratelimit-remaining-requests") == "0"
                 and c["status"] == 200]
        assert spent, "the provider never said its quota was spent"
        for answer in spent:
            start = answer["started_monotonic"]
            reset = parse_duration(answer["ratelimit"]["x-ratelimit-reset-requests"])
            assert reset is not None
            early = [round(c["started_monotonic"] - start, 3) for c in calls
                     if start + 0.05 < c["started_monotonic"] < start + reset - 0.01]
            assert early == [], (answer["ratelimit"], early)
        # Only calls sent before the provider first said its quota was spent can be refused
        # (how many of those there are depends on how the first batches were spread).
        first_spent = spent[0]["started_monotonic"] + 0.05
        late = [c for c in calls if c["status"] == 429 and c["started_monotonic"] > first_spent]
        assert late == [], late
        gaps = [b["started_monotonic"] - a["started_monotonic"]
                for a, b in itertools.pairwise(calls)]
        assert max(gaps) >= 1.0  # it did wait for a reset


def test_a_deadline_passes_while_the_provider_is_paused(tmp_path: Path, redis_url: str,
                                                       api_factory: Any) -> None:
    """A 429 with Retry-After: 60 pauses the provider for every processor; a task with a 2 s
    deadline submitted then ends deadline_exceeded and is never sent."""
    with running_stack(tmp_path, redis_url, processors=2, env={"DRAIN_S": "1"}) as stack:
        api = api_factory(stack.edge_url)
        pauser = uuid.uuid4().hex[:8]
        first = api.submit(tagged(pauser, fault={"status": 429, "retry_after": "60",
                                                  "times": 1, "key": pauser}))
        wait_for(lambda: [c["status"] for c in records(stack, pauser)] == [429], 20,
                 "the provider to ask for a pause")
        r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        keys = Keys(stack.prefix)
        [provider] = r.hkeys(keys.governors)
        wait_for(lambda: float(r.hget(keys.governor(provider), "pause_until") or 0) > 0, 10,
                 "the pause to be shared")
        late = uuid.uuid4().hex[:8]
        task_id = api.submit({**tagged(late), "deadline": 2})
        # While it waits, users can see why.
        seen = wait_for(lambda: (t := api.get(task_id)).get("waiting_for") and t, 10,
                        "the task to say what it waits for")
        # (A processor that had not yet heard of the pause may hold it: running, but waiting.)
        assert seen["status"] in ("queued", "batched", "running")
        assert seen["waiting_for"]["reason"] in ("coordinator", "batch_timer", "provider_pause")
        paused = wait_for(lambda: (t := api.get(first))["waiting_for"] and t, 10,
                          "the paused task to say why")
        assert paused["waiting_for"]["reason"] == "provider_pause"
        assert paused["waiting_for"]["until"] is not None and paused["queue_position"] == 1
        ai = httpx.get(f"{stack.edge_url}/api/ai-status").json()
        [gov] = ai["providers"]
        assert gov["paused_until"] is not None and gov["rate_limited_last_minute"] == 1
        assert gov["in_flight"] == 0 and gov["limit"] >= 1
        tenants = httpx.get(f"{stack.edge_url}/api/async-status").json()["tenants"]
        assert sum(t["queued"] for t in tenants.values()) == 2
        task = api.wait_terminal(task_id, 20)
        assert task["status"] == "failed"
        assert task["error"]["code"] == "deadline_exceeded"
        assert records(stack, late) == []
        assert api.get(first)["status"] in ("running", "queued", "batched")
        dead = [d["id"] for d in httpx.get(f"{stack.edge_url}/api/dead-letters").json()["data"]]
        assert task_id in dead
        # The OpenAI front door takes the field too; a time already past fails at once.
        v1 = httpx.post(f"{stack.edge_url}/v1/chat/completions", timeout=30, json={
            "model": "mock-r1", "messages": [{"role": "user", "content": "late"}],
            "deadline": "2000-01-01T00:00:00Z", "metadata": {"mock": {"tag": late}}})
        assert v1.status_code == 408 and v1.json()["error"]["code"] == "deadline_exceeded"
        assert records(stack, late) == []
        r.close()

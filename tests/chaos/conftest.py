"""Helpers for the chaos suite: short leases so recovery is quick, and readers of the state a
checker needs (task hash, event stream, store rows, the mock's request records)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pytest
import redis

from harness.processes import Service, Stack
from harness.waiting import wait_for
from shared.keys import Keys


@pytest.fixture(autouse=True)
def _on_each_store(stack_store: str) -> str:
    """Every test here runs on each store (tests/conftest.py: stack_store)."""
    return stack_store

LEASE_MS = 2000
CHAOS_ENV = {
    "LOCK_TTL_MS": str(LEASE_MS), "RECLAIM_INTERVAL_S": "0.3", "RETRY_BASE_S": "0.05",
    "RETRY_CAP_S": "0.5", "HEARTBEAT_S": "0.2", "DRAIN_S": "1", "AI_IDLE_TIMEOUT_S": "1",
    "COORDINATOR_RECLAIM_IDLE_MS": "1000",
}
# What the settings allow for a crashed holder: lease expiry, the reclaim scan, the call again.
RECOVERY_LIMIT_S = (LEASE_MS / 1000 + 0.3) * 3 + 10


def slow(tokens_per_s: float = 20, content_tokens: int = 40, **extra: Any) -> dict[str, Any]:
    """A request whose mock answer takes a while, tagged so its provider calls can be found."""
    tag = uuid.uuid4().hex[:12]
    mock = {"tokens_per_s": tokens_per_s, "content_tokens": content_tokens,
            "reasoning_tokens": 4, "tag": tag, **extra}
    return {"prompt": f"chaos {tag}", "metadata": {"mock": mock}}


def tag_of(body: dict[str, Any]) -> str:
    return str(body["metadata"]["mock"]["tag"])


def client(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.redis_url, decode_responses=True)


def task_hash(stack: Stack, task_id: str) -> dict[str, str]:
    with client(stack) as r:
        return dict(r.hgetall(Keys(stack.prefix).task(task_id)))  # type: ignore[arg-type]


def events(stack: Stack, task_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(entry id, type, data) of every event of a task, from its Redis stream."""
    with client(stack) as r:
        entries = r.xrange(Keys(stack.prefix).events(task_id))
    return [(eid, f["e"], orjson.loads(f["d"])) for eid, f in entries]  # type: ignore[union-attr]


def final_text(evts: list[tuple[str, str, dict[str, Any]]], kind: str = "content") -> str:
    """What a client that honours `reset` ends up with."""
    parts: list[str] = []
    for _eid, etype, data in evts:
        if etype == "reset":
            parts = []
        elif etype == kind:
            parts.append(data["delta"])
    return "".join(parts)


def terminal_events(evts: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    return [t for _e, t, _d in evts if t in ("done", "error", "cancelled")]


def streaming_on(stack: Stack, task_id: str) -> str | None:
    """The processor streaming the task's answer (running, some content already in its
    events), or None."""
    h = task_hash(stack, task_id)
    has_content = any(t == "content" for _e, t, _d in events(stack, task_id))
    return h.get("processor") if h.get("status") == "running" and has_content else None


def running_holder(stack: Stack, task_id: str) -> str:
    return str(wait_for(lambda: streaming_on(stack, task_id), 30,
                        "the task to stream on some processor"))


def in_flight(stack: Stack, processor: str) -> int | None:
    """The tasks a processor last reported running (services/processor/worker.py)."""
    with client(stack) as r:
        value = r.hget(Keys(stack.prefix).processors_inflight, processor)
    return None if value is None else int(value)  # type: ignore[arg-type]


def mock_records(stack: Stack, tag: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{stack.mock_url}/mock/requests", params={"tag": tag})
    return list(r.json()["requests"])


def service_named(stack: Stack, name: str) -> Service:
    """The processor or coordinator process whose PROCESSOR_NAME / COORDINATOR_NAME is name."""
    counter = name.rsplit("-", 1)[-1]
    return next(s for s in stack.services if s.name.endswith(f"-{counter}"))

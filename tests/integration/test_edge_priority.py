"""The edge's side of fair dispatch: a task's priority (the body field on both fronts, the
/v1 header and service_tier "flex") stored for the coordinators with the task's estimated
tokens, never sent to the provider, a bad one refused; and the tenant's own x-ratelimit-*
headers on submit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from services.edge.tasks.validation import FLEX_PRIORITY, PRIORITY_HEADER
from services.processor.provider import request_body
from shared.config import Env
from shared.config import Provider as ProviderSettings
from shared.governor import parse_duration
from tests.integration.edge_client import EdgeUnderTest, running_edge
from tests.integration.test_edge_validation import assert_nothing_stored

MESSAGES = [{"role": "user", "content": "x" * 400}]


async def post(edge: EdgeUnderTest, path: str, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> Any:
    return await edge.client.post(path, data=orjson.dumps(body),
                                  headers={"Content-Type": "application/json", **(headers or {})})


async def task_fields(edge: EdgeUnderTest, task_id: str) -> dict[str, str]:
    return dict(await edge.redis.hgetall(f"{{{edge.prefix}}}:task:{task_id}"))


@pytest.mark.parametrize(("path", "body", "headers", "priority"), [
    ("/api/tasks", {}, {}, "0"),
    ("/api/tasks", {"priority": -10}, {}, "-10"),
    ("/v1/chat/completions", {"priority": 5}, {PRIORITY_HEADER: "7"}, "5"),  # the body wins
    ("/v1/chat/completions", {}, {PRIORITY_HEADER: " -3 "}, "-3"),
    ("/v1/chat/completions", {"service_tier": "flex"}, {}, str(FLEX_PRIORITY)),
    ("/v1/chat/completions", {"service_tier": "default"}, {}, "0"),
])
async def test_priority_is_stored_with_the_estimated_tokens_and_kept_from_the_provider(
        redis_url: str, tmp_path: Path, path: str, body: dict[str, Any],
        headers: dict[str, str], priority: str) -> None:
    async with running_edge(redis_url, tmp_path) as edge:
        # /v1 waits for the answer; no processor runs here, so ask for a stream and leave.
        stream = {"stream": True} if path.startswith("/v1") else {}
        r = await post(edge, path, {"messages": MESSAGES, "max_tokens": 50, **body, **stream},
                       headers)
        assert r.status in (200, 202), await r.text()
        task_id = r.headers.get("X-Sluice-Task-Id") or (await r.json())["id"]
        r.close()
        fields = await task_fields(edge, task_id)
        assert fields["priority"] == priority
        assert fields["cost"] == str(400 // 4 + 50)  # prompt tokens (4 characters each) + max
        sent = orjson.loads(request_body(orjson.loads(fields["request"]),
                                         ProviderSettings.from_env(Env({}))))
        assert "priority" not in sent  # Sluice's; service_tier is forwarded as given
        assert sent.get("service_tier") == body.get("service_tier")


@pytest.mark.parametrize(("path", "body", "headers", "param"), [
    ("/api/tasks", {"priority": 1001}, {}, "priority"),
    ("/api/tasks", {"priority": "high"}, {}, "priority"),
    ("/api/tasks", {"priority": 1.5}, {}, "priority"),
    ("/v1/chat/completions", {"priority": -1001}, {}, "priority"),
    ("/v1/chat/completions", {}, {PRIORITY_HEADER: "soon"}, PRIORITY_HEADER),
    ("/v1/chat/completions", {}, {PRIORITY_HEADER: "5000"}, PRIORITY_HEADER),
    ("/v1/chat/completions", {"priority": 5}, {PRIORITY_HEADER: ""}, PRIORITY_HEADER),
    ("/v1/chat/completions", {"service_tier": 3}, {}, "service_tier"),
])
async def test_a_bad_priority_is_422_naming_it_and_nothing_is_stored(
        redis_url: str, tmp_path: Path, path: str, body: dict[str, Any],
        headers: dict[str, str], param: str) -> None:
    async with running_edge(redis_url, tmp_path) as edge:
        r = await post(edge, path, {"messages": MESSAGES, **body}, headers)
        error = (await r.json())["error"]
        # The task API names the field as "field", /v1 as OpenAI's "param".
        assert r.status == 422 and param in (error.get("field"), error.get("param")), error
        await assert_nothing_stored(edge)


async def test_submit_answers_the_tenants_rate_limit_headers(
        redis_url: str, tmp_path: Path) -> None:
    async with running_edge(redis_url, tmp_path, TENANT_RATE_PER_MINUTE="2") as edge:
        seen = []
        for _ in range(3):
            r = await post(edge, "/api/tasks", {"prompt": "hi"})
            seen.append((r.status, r.headers.get("x-ratelimit-limit-requests"),
                         r.headers.get("x-ratelimit-remaining-requests")))
            reset = parse_duration(r.headers.get("x-ratelimit-reset-requests"))
            assert reset is not None and 0 < reset <= 60
        assert seen == [(202, "2", "1"), (202, "2", "0"), (429, "2", "0")]
    async with running_edge(redis_url, tmp_path, TENANT_RATE_PER_MINUTE="0") as edge:  # none
        r = await post(edge, "/api/tasks", {"prompt": "hi"})
        assert r.status == 202 and "x-ratelimit-limit-requests" not in r.headers

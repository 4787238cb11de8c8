"""Two tenants on one edge: neither can see or touch the other's tasks through any endpoint.

The route list comes from the app's own router (``create_app``), so a route with ``{id}`` added
later is covered without touching this file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import redis

from harness.processes import running_stack
from services.edge.app import create_app
from services.edge.settings import EdgeSettings
from shared.config import Env
from shared.keys import Keys
from tests.e2e.conftest import rows

KEY_A, KEY_B = "sk-tenant-alpha-61c2f0", "sk-tenant-beta-0e9d4a"
KEYS = f"{KEY_A}:alpha,{KEY_B}:beta"
FAIL = {"mock": {"fault": {"status": 400, "key": "tenants-fail"}}}


# Routes whose {id} names a file, a batch or a webhook endpoint, not a task (their tenant
# checks are in tests/integration/test_batch_api.py and test_webhooks.py).
NOT_TASKS = ("/v1/files/", "/v1/batches/", "/api/webhooks/")


def id_routes() -> list[tuple[str, str]]:
    """(method, path template) of every route of the app that names a task by its id."""
    app = create_app(EdgeSettings.from_env(Env({"EDGE_API_KEYS": KEYS})))
    return sorted({(r.method, r.resource.canonical) for r in app.router.routes()
                   if r.resource is not None and "{id}" in r.resource.canonical
                   and not r.resource.canonical.startswith(NOT_TASKS)
                   and r.method != "HEAD"})


def call(http: httpx.Client, method: str, path: str) -> tuple[int, str]:
    """The status and (at most the first 64 KiB of) the body, also for event streams."""
    with http.stream(method, path) as r:
        body = b""
        for chunk in r.iter_bytes():
            body += chunk
            if len(body) > 65536:
                break
        return r.status_code, body.decode(errors="replace")


def dead_letters(api: Any) -> set[str]:
    r = api.http.get("/api/dead-letters")
    assert r.status_code == 200, r.text
    return {d["id"] for d in r.json()["data"]}


def test_two_tenants_cannot_see_or_touch_each_others_tasks(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    routes = id_routes()
    assert {("GET", "/api/tasks/{id}"), ("DELETE", "/api/tasks/{id}"),
            ("GET", "/api/tasks/{id}/events"), ("POST", "/api/tasks/{id}/retry")} <= set(routes)
    with running_stack(tmp_path, redis_url, env={"EDGE_API_KEYS": KEYS}) as stack:
        alpha, beta = api_factory(stack.edge_url, KEY_A), api_factory(stack.edge_url, KEY_B)
        done = alpha.submit({"prompt": "alpha's secret question"})
        failed = alpha.submit({"prompt": "alpha fails", "metadata": FAIL})
        r = alpha.http.post("/v1/chat/completions",
                            json={"messages": [{"role": "user", "content": "alpha via v1"}]})
        assert r.status_code == 200, r.text
        via_v1 = r.headers["X-Sluice-Task-Id"]
        # A response is a task too, named by its resp_ id on the /v1/responses routes.
        r = alpha.http.post("/v1/responses", json={"input": "alpha via responses"})
        assert r.status_code == 200, r.text
        response = r.json()["id"]
        via_responses = "tsk_" + response.removeprefix("resp_")
        assert alpha.wait_terminal(done)["status"] == "succeeded"
        assert alpha.wait_terminal(failed)["status"] == "failed"
        assert alpha.wait_terminal(via_v1)["status"] == "succeeded"
        assert alpha.wait_terminal(via_responses)["status"] == "succeeded"
        ids = {"done": done, "failed": failed, "via_v1": via_v1, "via_responses": via_responses}
        for task_id in ids.values():
            assert re.fullmatch(r"tsk_[0-9a-f]{32}", task_id)  # 128 random bits

        def named(template: str, task_id: str) -> str:
            """The route's own name for the task: /v1/responses names it by its resp_ id."""
            if template.startswith("/v1/responses/"):
                task_id = "resp_" + task_id.removeprefix("tsk_")
            return template.replace("{id}", task_id)

        # Beta first: every route with {id}, every one of alpha's tasks, all 404.
        for method, template in routes:
            for name, task_id in ids.items():
                status, body = call(beta.http, method, named(template, task_id))
                assert status == 404, (method, template, name, body)
                assert "alpha" not in body and task_id not in body.replace(
                    f"/api/tasks/{task_id}", "")
                assert task_id.removeprefix("tsk_") not in body
        # ... and the same requests as alpha are answered: the 404s above were about tenants.
        # (Deletes last: DELETE /v1/responses/{id} forgets the response the others read.)
        for method, template in sorted(routes, key=lambda route: route[0] == "DELETE"):
            own = via_responses if template.startswith("/v1/responses/") else done
            status, body = call(alpha.http, method, named(template, own))
            assert status != 404, (method, template, body)

        # Nothing beta did changed alpha's tasks.
        assert alpha.get(done)["status"] == "succeeded"
        assert alpha.get(failed)["status"] == "failed"

        # Dead letters are per tenant too.
        assert failed in dead_letters(alpha) and failed not in dead_letters(beta)

        # The tenant is stored with the task, in Redis and in the store.
        r_ = redis.Redis.from_url(redis_url, decode_responses=True)
        keys = Keys(stack.prefix)
        kept = [i for i in ids.values() if i != via_responses]  # alpha deleted that one above
        assert alpha.http.get(f"/v1/responses/{response}").status_code == 404
        for task_id in kept:
            assert r_.hget(keys.task(task_id), "tenant") == "alpha"
        stored = rows(stack.store_path, "SELECT id, tenant FROM tasks")
        assert {(i, "alpha") for i in kept} <= set(stored)
        [edge] = stack.of("edge")
        assert '"open_access"' not in edge.log.read_text()


def test_idempotency_keys_are_per_tenant(tmp_path: Path, redis_url: str,
                                         api_factory: Any) -> None:
    """The same Idempotency-Key from another tenant is another request, not a replay that
    would hand over the first tenant's task."""
    with running_stack(tmp_path, redis_url, env={"EDGE_API_KEYS": KEYS}) as stack:
        alpha, beta = api_factory(stack.edge_url, KEY_A), api_factory(stack.edge_url, KEY_B)
        headers = {"Idempotency-Key": "order-42"}
        body = {"prompt": "same body"}
        a1 = alpha.submit(body, headers=headers)
        assert alpha.submit(body, headers=headers) == a1  # a replay for alpha
        b1 = beta.submit(body, headers=headers)
        assert b1 != a1
        assert beta.get(b1)["id"] == b1
        assert beta.http.get(f"/api/tasks/{a1}").status_code == 404
        chat = {"messages": [{"role": "user", "content": "same"}]}
        headers = {"Idempotency-Key": "chat-7"}
        ra = alpha.http.post("/v1/chat/completions", json=chat, headers=headers)
        rb = beta.http.post("/v1/chat/completions", json=chat, headers=headers)
        assert ra.status_code == rb.status_code == 200
        assert ra.headers["X-Sluice-Task-Id"] != rb.headers["X-Sluice-Task-Id"]
        assert ra.json()["id"] != rb.json()["id"]


def test_without_keys_the_edge_is_open_and_says_so(tmp_path: Path, redis_url: str,
                                                  api_factory: Any) -> None:
    with running_stack(tmp_path, redis_url, processors=0) as stack:
        api = api_factory(stack.edge_url)
        assert api.http.get("/api/health").json()["auth"].startswith("open")
        task_id = api.submit()
        r_ = redis.Redis.from_url(redis_url, decode_responses=True)
        assert r_.hget(Keys(stack.prefix).task(task_id), "tenant") == "public"
        [edge] = stack.of("edge")
        assert '"open_access"' in edge.log.read_text()

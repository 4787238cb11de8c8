"""Status is scoped like everything else: on every status route (/api/async-status,
/api/ai-status and the dashboard's /api/admin/*, taken from the app's router) a tenant's key
sees its own tenant's figures only, another tenant's key sees none of them, and an admin key
sees every tenant's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse

from services.edge.app import create_app
from services.edge.context import EDGE
from services.edge.plumbing.auth import ADMIN_PREFIX, STATUS_PATHS
from services.edge.settings import EdgeSettings
from shared import tasks
from shared.config import Env
from shared.store import TaskRow
from shared.timeutil import now_ms
from tests.integration.edge_client import EdgeUnderTest, running_edge
from tests.integration.kit import begun, complete

KEY_A, KEY_B, ADMIN = "sk-scope-alpha-1", "sk-scope-beta-2", "sk-scope-admin-3"
ENV = {"EDGE_API_KEYS": f"{KEY_A}:alpha,{KEY_B}:beta", "EDGE_ADMIN_KEYS": ADMIN}
PROCESSOR, COORDINATOR = "proc-hidden-name", "coord-hidden-name"

pytestmark = pytest.mark.first_store_only


def status_routes() -> list[tuple[str, str]]:
    """Every (method, path template) of the app that reports status."""
    app = create_app(EdgeSettings.from_env(Env(ENV)))
    out = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if route.method != "HEAD" and (path in STATUS_PATHS or path.startswith(ADMIN_PREFIX)):
            out.add((route.method, path))
    return sorted(out)


def test_the_status_routes_are_those_of_the_issue() -> None:
    paths = {p for _, p in status_routes()}
    assert {"/api/async-status", "/api/ai-status", "/api/admin/overview", "/api/admin/live",
            "/api/admin/dead-letters", "/api/admin/tasks/{id}"} <= paths


@pytest.fixture
async def edge(redis_url: str, tmp_path: Path) -> AsyncIterator[EdgeUnderTest]:
    async with running_edge(redis_url, tmp_path, **ENV) as e:
        yield e


async def submit(edge: EdgeUnderTest, key: str) -> str:
    r = await edge.client.post("/api/tasks", json={"prompt": "hi"},
                               headers={"Authorization": f"Bearer {key}"})
    assert r.status == 202, await r.text()
    return str((await r.json())["id"])


async def text_of(r: ClientResponse) -> str:
    if r.content_type == "text/event-stream":
        chunk = await r.content.readany()  # the replay: the stream itself stays open
        r.close()
        return chunk.decode()
    return await r.text()


async def call(edge: EdgeUnderTest, method: str, path: str, key: str) -> tuple[int, str]:
    r = await edge.client.request(method, path, headers={"Authorization": f"Bearer {key}"})
    return r.status, await text_of(r)


async def test_every_status_route_shows_a_tenant_its_own_figures_and_an_admin_all(
        edge: EdgeUnderTest) -> None:
    a_task, b_task = await submit(edge, KEY_A), await submit(edge, KEY_B)
    steps = edge.client.app[EDGE].steps
    b_dead = await submit(edge, KEY_B)  # failed for good: a dead letter of beta's
    await begun(steps, b_dead, token="tok-dead")
    await complete(steps, b_dead, "tok-dead", tasks.FAILED)
    # ... and its row, as its processor writes it: the dashboard lists dead letters from
    # the store.
    now = now_ms()
    await edge.client.app[EDGE].store.save_task(TaskRow(
        id=b_dead, tenant="beta", status=tasks.FAILED, model=None, request="{}", content=None,
        reasoning_content=None, finish_reason=None, prompt_tokens=None,
        completion_tokens=None, total_tokens=None, attempts=1,
        error='{"code":"provider_error","message":"no"}', batch_id=None, processor=PROCESSOR,
        fence=1, created_at=now, started_at=now, completed_at=now))
    await steps.report_capacity(name=PROCESSOR, free=3, expiry_ms=now_ms() + 60_000, taken=0,
                                inflight=1, room=3)
    await steps.heartbeat(name=COORDINATOR, expiry_ms=now_ms() + 60_000, forget_before_ms=0)
    theirs = {"beta", b_task, b_dead, PROCESSOR, COORDINATOR}
    mine = {"alpha", a_task, PROCESSOR, COORDINATOR}
    for method, template in status_routes():
        own, others = (template.replace("{id}", a_task), template.replace("{id}", b_task))
        # A tenant's key: its own figures, nothing of another tenant, no process names.
        status, text = await call(edge, method, own, KEY_A)
        assert status in (200, 409), (method, own, status, text)  # 409: retry of a live task
        leaked = [s for s in theirs if s in text]
        assert not leaked, (method, own, leaked, text)
        # Another tenant's key on the same route: none of the first tenant's.
        status, text = await call(edge, method, own, KEY_B)
        assert status == (404 if "{id}" in template else 200), (method, own, status, text)
        leaked = [s for s in mine if s in text]
        assert not leaked, (method, own, leaked, text)
        # An admin key: 200 on every status route, every tenant's figures.
        status, text = await call(edge, method, others, ADMIN)
        assert status in (200, 409), (method, others, status, text)
        # (Live's stream follows running tasks only, and none runs here: its first event is
        # empty for every key; what it must not leak is checked above.)
        if "{id}" not in template and template not in ("/api/ai-status",
                                                       "/api/admin/live/events"):
            assert {b_task, b_dead, "beta"} & {w for w in theirs if w in text}, (others, text)
    await _figures_are_scoped(edge)


async def _figures_are_scoped(edge: EdgeUnderTest) -> None:
    async def get(path: str, key: str) -> dict[str, Any]:
        r = await edge.client.get(path, headers={"Authorization": f"Bearer {key}"})
        assert r.status == 200, await r.text()
        return dict(await r.json())

    mine = await get("/api/async-status", KEY_A)
    assert mine["scope"] == "tenant" and mine["tenants"] == {"alpha": {"queued": 1,
                                                                         "running": 0}}
    assert mine["queue"]["depth"] == 1 and mine["processors"]["tasks_in_flight"] == 0
    assert mine["processors"]["free_capacity"] is None and mine["stats"] == {}
    assert mine["processors"]["count"] == 1 and mine["coordinators"]["count"] == 1
    every = await get("/api/async-status", ADMIN)
    assert every["scope"] == "all" and set(every["tenants"]) == {"alpha", "beta"}
    assert every["processors"]["free_capacity"] == 3
    assert every["processors"]["tasks_in_flight"] == 1
    overview = await get("/api/admin/overview", KEY_A)
    assert overview["access"] == "tenant" and overview["processors"] == []
    assert overview["history"] == [] and overview["waiting_by_tenant"] == {"alpha": 1}
    assert sum(overview["depth"].values()) == 1
    admin = await get("/api/admin/overview", ADMIN)
    assert [p["name"] for p in admin["processors"]] == [PROCESSOR]
    assert len(admin["history"]) == 60
    assert set(admin["waiting_by_tenant"]) == {"alpha", "beta"}

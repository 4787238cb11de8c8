"""The edge over Redis ``maxmemory``: every route that writes answers 503 ``queue_full`` with
Retry-After and leaves Redis exactly as it was; reads go on; /api/health says why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from harness.processes import RedisServer
from services.edge.app import create_app
from services.edge.plumbing.errors import QUEUE_FULL_RETRY_S
from services.edge.settings import EdgeSettings
from shared.config import Env
from tests.integration.edge_client import EdgeUnderTest, running_edge

READS = {"GET", "HEAD"}
# Routes that write only to the store, never to Redis: a full Redis does not concern them (the
# batch runner and the webhook sender wait it out like the other services).
STORE_ONLY = {("POST", "/v1/files"), ("DELETE", "/v1/files/{id}"), ("POST", "/v1/batches"),
              ("POST", "/v1/batches/{id}/cancel"), ("POST", "/api/webhooks"),
              ("DELETE", "/api/webhooks/{id}"), ("POST", "/api/webhooks/{id}/test"),
              ("POST", "/api/webhook-secret/rotate")}


def writing_routes() -> set[tuple[str, str]]:
    app = create_app(EdgeSettings.from_env(Env({"BATCH_API": "1"})))
    return {(r.method, r.resource.canonical) for r in app.router.routes()
            if r.method not in READS and r.resource is not None}


async def snapshot(edge: EdgeUnderTest) -> dict[str, tuple[bytes | None, bool]]:
    raw = aioredis.Redis.from_url(edge.settings.common.redis_url.get())
    try:
        return {k: (await raw.dump(k), await raw.pttl(k) > 0) for k in await edge.redis_keys()}
    finally:
        await raw.aclose()


async def test_every_write_gets_503_queue_full_and_changes_nothing(
        own_redis: RedisServer, tmp_path: Path) -> None:
    async with running_edge(own_redis.url, tmp_path, BATCH_API="1") as edge:
        c = edge.client
        queued = (await (await c.post("/api/tasks", json={"prompt": "a"})).json())["id"]
        failed = (await (await c.post("/api/tasks", json={"prompt": "b"})).json())["id"]
        await edge.redis.hset(f"{{{edge.prefix}}}:task:{failed}", "status", "failed")
        model = edge.settings.provider.ai_model
        waiting = (await (await c.post("/v1/responses", json={
            "model": model, "input": "e", "background": True})).json())["id"]
        bodies: dict[tuple[str, str], tuple[str, Any]] = {
            ("POST", "/api/tasks"): ("/api/tasks", {"prompt": "c"}),
            ("DELETE", "/api/tasks/{id}"): (f"/api/tasks/{queued}", None),
            ("POST", "/api/tasks/{id}/retry"): (f"/api/tasks/{failed}/retry", None),
            ("POST", "/api/admin/tasks/{id}/retry"): (f"/api/admin/tasks/{failed}/retry", None),
            ("POST", "/v1/chat/completions"): ("/v1/chat/completions", {
                "model": model, "messages": [{"role": "user", "content": "d"}]}),
            ("POST", "/v1/responses"): ("/v1/responses", {"model": model, "input": "f"}),
            ("POST", "/v1/responses/{id}/cancel"): (f"/v1/responses/{waiting}/cancel", None),
            # queued: forgetting waits for its cancellation, which is refused
            ("DELETE", "/v1/responses/{id}"): (f"/v1/responses/{waiting}", None),
        }
        # a new writing route must be added here
        assert set(bodies) | STORE_ONLY == writing_routes()
        before = await snapshot(edge)
        await edge.redis.config_set("maxmemory", 1)
        try:
            for (method, _route), (path, body) in bodies.items():
                r = await c.request(method, path, json=body,
                                    headers={"Idempotency-Key": "k1"} if body else {})
                payload = await r.json()
                assert r.status == 503, (method, path, payload)
                assert r.headers["Retry-After"] == str(QUEUE_FULL_RETRY_S)
                assert payload["error"]["code"] == "queue_full", payload
            read = await c.get(f"/api/tasks/{queued}")
            assert read.status == 200 and (await read.json())["status"] == "queued"
            health = await c.get("/api/health")
            body = await health.json()
            assert health.status == 200, body  # the edge itself is fine: reads go on
            assert body["status"] == "degraded" and body["redis_memory"]["state"] == "full"
            assert body["redis_memory"]["used_bytes"] > body["redis_memory"]["maxmemory_bytes"]
        finally:
            await edge.redis.config_set("maxmemory", 0)
        assert await snapshot(edge) == before
        assert edge.store_rows("idempotency_keys") == 0
        r = await c.post("/api/tasks", json={"prompt": "c"})
        assert r.status == 202
        body = await (await c.get("/api/health")).json()
        assert body["status"] == "ok" and body["redis_memory"]["state"] == "ok", body


async def test_health_says_degraded_near_maxmemory(
        own_redis: RedisServer, tmp_path: Path) -> None:
    async with running_edge(own_redis.url, tmp_path) as edge:
        used = int((await edge.redis.info("memory"))["used_memory"])
        await edge.redis.config_set("maxmemory", int(used / 0.95))
        try:
            body = await (await edge.client.get("/api/health")).json()
        finally:
            await edge.redis.config_set("maxmemory", 0)
        mem = body["redis_memory"]
        assert body["status"] == "degraded" and mem["state"] == "high", body
        assert 90 <= mem["used_percent"] < 100
        assert (await edge.client.post("/api/tasks", json={"prompt": "x"})).status == 202

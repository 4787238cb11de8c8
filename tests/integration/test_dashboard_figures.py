"""/api/admin/figures against tasks run here (the real edge, coordinator and processor in
process, on one prefix and store): totals, rates, latency counts and percentiles (each in the
bucket of the true one, computed from the tasks' own times), tokens, per-tenant (with weights)
and per-model splits; every count an integer and every time ISO; a tenant's key sees its own
row only."""

from __future__ import annotations

import math
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from shared import rollup
from shared.keys import Keys
from shared.redis_conn import RedisClient
from shared.steps import Steps
from shared.store import make_store
from shared.timeutil import now_ms
from tests.integration.edge_client import running_edge
from tests.integration.kit import Core

KEY, OTHER, ADMIN = "sk-fig-acme", "sk-fig-globex", "sk-fig-admin"
ENV = {"EDGE_API_KEYS": f"{KEY}:acme,{OTHER}:globex", "EDGE_ADMIN_KEYS": ADMIN}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
pytestmark = pytest.mark.first_store_only


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def submit(client: TestClient, key: str, mock: dict[str, Any]) -> str:
    r = await client.post("/api/tasks", headers=auth(key), json={
        "model": "mock-r1", "messages": [{"role": "user", "content": "hi"}],
        "metadata": {"mock": mock}})
    assert r.status == 202, await r.text()
    return str((await r.json())["id"])


# The processor observes a task's end just after its complete step stamped completed_at: on a
# loaded machine some ms later, which may cross a bucket's bound.
OBSERVED_LATE_S = 0.25


def in_true_bucket(reported: float | None, values: list[float], q: float) -> bool:
    """``reported`` lies in the rollup bucket holding the true ``q`` quantile of ``values``
    (or, for an observation made up to OBSERVED_LATE_S later, in a bucket up to that one)."""
    ordered = sorted(values)
    true = ordered[max(0, math.ceil(q * len(ordered)) - 1)]
    i = rollup.bucket(true)
    lower = rollup.BUCKETS[i - 1] if i else 0.0
    upper = rollup.BUCKETS[rollup.bucket(true + OBSERVED_LATE_S)]
    return reported is not None and lower <= reported <= upper


def walk(value: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in walk(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [x for v in value for x in walk(v, path + "[]")]
    return [(path, value)]


async def test_the_figures_are_those_of_the_tasks_run(
        redis_url: str, redis: RedisClient, tmp_path: Path, mock_url: str) -> None:
    await rollup.flush(redis, Keys("discard-" + uuid.uuid4().hex[:6]))  # earlier tests' counts
    async with running_edge(redis_url, tmp_path, **ENV) as edge:
        keys = Keys(edge.prefix)
        store = make_store(str(edge.store_path))
        await store.open()
        core = Core(redis_url=redis_url, redis=redis, keys=keys, steps=Steps(redis, keys),
                    store=store, mock_url=mock_url)
        try:
            c = edge.client
            ok = {"content_tokens": 4, "reasoning_tokens": 0}
            ids = [await submit(c, KEY, ok) for _ in range(4)]
            ids.append(await submit(c, OTHER, ok))
            ids.append(await submit(c, KEY, {"fault": {"key": uuid.uuid4().hex,
                                                       "status": 400}}))
            ids.append(await submit(c, OTHER, {**ok, "fault": {
                "key": uuid.uuid4().hex, "status": 429, "retry_after": "0", "times": 1}}))
            await core.burst(core.processor(TENANT_WEIGHTS="acme:3", MAX_ATTEMPTS="1"))
            # The 429 sent its task back to the queue: run the rest.
            await core.burst(core.processor("p2", MAX_ATTEMPTS="1"))
            tasks = [await (await c.get(f"/api/tasks/{t}", headers=auth(
                KEY if i < 4 or i == 5 else OTHER))).json() for i, t in enumerate(ids)]
            assert [t["status"] for t in tasks] == ["succeeded"] * 5 + ["failed", "succeeded"]
            await redis.hset(keys.tenant_weights, mapping={"acme": "3"})
            await rollup.flush(redis, keys)
            r = await c.get("/api/admin/figures?range=1h", headers=auth(ADMIN))
            assert r.status == 200, await r.text()
            f = await r.json()
        finally:
            await core.close()
            await store.close()
        assert f["totals"]["submitted"] == 7 and f["totals"]["finished"] == 7
        assert f["totals"]["failed"] == 1 and f["error_rate"] == round(1 / 7, 4)
        assert f["totals"]["rate_limited"] == 1
        calls = f["totals"]["calls"] + f["totals"]["call_errors"]
        assert calls == 8 and f["rate_limited_rate"] == round(1 / 8, 4)
        assert f["totals"]["tokens_out"] == 6 * 4
        assert f["tokens_per_s"] == round((f["totals"]["tokens_in"] + 24) / 3600, 3)
        lat = f["latency"]
        assert lat["queue_wait"]["count"] == 7 and lat["e2e"]["count"] == 7
        assert lat["client_ttft"]["count"] == 6  # the failed task never had a token
        e2e = [(to_ms(t["completed_at"]) - to_ms(t["created_at"])) / 1000 for t in tasks]
        for label, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            assert in_true_bucket(lat["e2e"][label], e2e, q), (label, lat["e2e"], e2e)
        assert lat["e2e"]["p50"] <= lat["e2e"]["p95"] <= lat["e2e"]["p99"]
        tenants = {t["tenant"]: t for t in f["tenants"]}
        assert tenants["acme"]["finished"] == 5 and tenants["acme"]["failed"] == 1
        assert tenants["globex"]["finished"] == 2 and tenants["acme"]["weight"] == 3
        assert tenants["globex"]["weight"] == 1
        assert {m["model"]: m["finished"] for m in f["models"]} == {"mock-r1": 7}
        assert len(f["series"]) == 60 and sum(p["finished"] for p in f["series"]) == 7
        assert f["bottleneck"] == "nothing waits"
        # Counts are integers, times ISO.
        for path, v in walk(f):
            if path.endswith((".t", ".from", ".to")):
                assert ISO.match(v), (path, v)
            if path.startswith(".totals") or (not path.startswith(".series") and path.endswith(
                    (".count", ".finished", ".failed", ".tokens"))):
                assert isinstance(v, int), (path, v)
        # The status routes: every time ISO, every count an integer.
        for path in ("/api/async-status", "/api/ai-status", "/api/admin/overview"):
            body = await (await edge.client.get(path, headers=auth(ADMIN))).json()
            for where, v in walk(body):
                if where.endswith(("_at", ".timestamp", ".t", "flush_at", "until")):
                    assert v is None or ISO.match(v), (path, where, v)
                if where.split(".")[-1] in ("count", "depth", "size", "in_flight", "free",
                                            "busy", "limit", "remaining", "tasks_waiting",
                                            "queued", "running", "waiting", "batched",
                                            "dead", "submitted", "finished", "failed"):
                    assert v is None or isinstance(v, int), (path, where, v)
        mine = await (await edge.client.get("/api/admin/figures?range=24h",
                                            headers=auth(OTHER))).json()
        assert [t["tenant"] for t in mine["tenants"]] == ["globex"]
        assert "latency" not in mine and "series" not in mine
        bad = await edge.client.get("/api/admin/figures?range=2d", headers=auth(ADMIN))
        assert bad.status == 400 and (await bad.json())["error"]["code"] == "invalid_range"


def to_ms(at: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp() * 1000)


def test_now_ms_is_what_the_times_are_read_against() -> None:
    assert abs(to_ms("2030-01-01T00:00:00.000Z") - 1_893_456_000_000) == 0 and now_ms() > 0

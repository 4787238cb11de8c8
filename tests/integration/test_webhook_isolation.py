"""Webhook endpoints are isolated: an endpoint that accepts connections and never answers (a
tarpit) holds a few connections of its own, and another tenant's deliveries go out beside it.

The real edge (its webhook sender included), a real HTTP receiver, and a tarpit: a TCP server
that reads what it gets and never answers."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from harness.waiting import until
from tests.integration.edge_client import EdgeUnderTest, running_edge

EVIL, GOOD = "sk-hooks-evil-1", "sk-hooks-good-2"
KEYS = f"{EVIL}:evil,{GOOD}:good"
TARPIT_DELIVERIES = 300
ENDPOINT_CONCURRENCY = 2


@dataclass
class Tarpit:
    """Accepts, reads, never answers; counts the connections it holds."""
    port: int = 0
    open_now: int = 0
    most_open: int = 0
    accepted: int = 0
    held: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        self.held.append(writer)
        try:
            while await reader.read(65536):
                pass  # read on, answer never
        finally:
            self.open_now -= 1


@pytest.fixture
async def tarpit() -> AsyncIterator[Tarpit]:
    pit = Tarpit()
    server = await asyncio.start_server(pit.handle, "127.0.0.1", 0)
    pit.port = server.sockets[0].getsockname()[1]
    yield pit
    for w in pit.held:
        w.close()
    server.close()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[bytes]]]:
    got: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        got.append(await request.read())
        return web.Response(text="ok")
    app = web.Application()
    app.router.add_post("/hook", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/hook")), got
    await server.close()


async def register(edge: EdgeUnderTest, key: str, url: str) -> str:
    r = await edge.client.post("/api/webhooks", json={"url": url},
                               headers={"Authorization": f"Bearer {key}"})
    assert r.status == 201, await r.text()
    return str((await r.json())["id"])


async def send_test(edge: EdgeUnderTest, key: str, endpoint: str) -> None:
    r = await edge.client.post(f"/api/webhooks/{endpoint}/test",
                               headers={"Authorization": f"Bearer {key}"})
    assert r.status == 202, await r.text()


async def states(edge: EdgeUnderTest, endpoint: str) -> dict[str, int]:
    out: dict[str, int] = {}
    r = await edge.client.get(f"/api/webhooks/{endpoint}/deliveries",
                              headers={"Authorization": f"Bearer {EVIL}"})
    for d in (await r.json())["data"]:  # the newest 100
        out[d["state"]] = out.get(d["state"], 0) + 1
    return out


async def test_a_tarpit_endpoint_holds_up_no_other_tenants_webhook(
        redis_url: str, tmp_path: Path, tarpit: Tarpit,
        receiver: tuple[str, list[bytes]]) -> None:
    url, got = receiver
    async with running_edge(redis_url, tmp_path, EDGE_API_KEYS=KEYS, BATCH_API="true",
                            WEBHOOK_ALLOW_PRIVATE="true", WEBHOOK_TICK_S="0.05",
                            WEBHOOK_ENDPOINT_CONCURRENCY=str(ENDPOINT_CONCURRENCY)) as edge:
        pit = await register(edge, EVIL, f"http://127.0.0.1:{tarpit.port}/hook")
        for _ in range(TARPIT_DELIVERIES):
            await send_test(edge, EVIL, pit)
        await until(lambda: tarpit.accepted > 0, 10, "the tarpit to take a delivery")
        healthy = await register(edge, GOOD, url)
        await send_test(edge, GOOD, healthy)
        # Generous: a hang guard, not a speed test (before: the sender waited for 64 tarpit
        # deliveries at a time, 10 s each round, and this came after about 50 s).
        await until(lambda: got, 25, "the healthy endpoint's webhook")
        assert edge.store_rows("webhook_deliveries") == TARPIT_DELIVERIES + 1
        # ... while the tarpit's deliveries are all still pending: none was dropped or
        # failed to make room.
        assert await states(edge, pit) == {"pending": 100}
        rows = edge.store_rows("webhook_attempts")
        assert rows <= TARPIT_DELIVERIES, rows
        # The tarpit held no more connections than one endpoint may have in flight.
        assert tarpit.most_open <= ENDPOINT_CONCURRENCY, tarpit.most_open


def _rows(edge: EdgeUnderTest, sql: str, *params: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(edge.store_path)
    try:
        return list(conn.execute(sql, params).fetchall())
    finally:
        conn.close()


async def test_a_target_that_keeps_timing_out_is_slowed_alone(
        redis_url: str, tmp_path: Path, tarpit: Tarpit,
        receiver: tuple[str, list[bytes]]) -> None:
    url, got = receiver
    async with running_edge(redis_url, tmp_path, EDGE_API_KEYS=KEYS, BATCH_API="true",
                            WEBHOOK_ALLOW_PRIVATE="true", WEBHOOK_TICK_S="0.05",
                            WEBHOOK_TIMEOUT_S="0.3", WEBHOOK_RETRY_BASE_S="30",
                            WEBHOOK_ENDPOINT_CONCURRENCY="1") as edge:
        pit = await register(edge, EVIL, f"http://127.0.0.1:{tarpit.port}/hook")
        healthy = await register(edge, GOOD, url)
        for _ in range(20):
            await send_test(edge, EVIL, pit)
        for _ in range(10):
            await send_test(edge, GOOD, healthy)

        def failed_attempts() -> list[tuple[object, ...]]:
            return _rows(edge, "SELECT a.at FROM webhook_attempts a JOIN webhook_deliveries d "
                         "ON d.id = a.delivery_id WHERE d.endpoint_id = ? ORDER BY a.at", pit)
        await until(lambda: len(failed_attempts()) >= 2, 20, "two failed attempts")
        await until(lambda: len(got) >= 10, 20, "the ten healthy deliveries")
        second_failure = int(str(failed_attempts()[1][0]))

        def untried() -> list[int]:
            return [int(str(n)) for (n,) in _rows(
                edge, "SELECT next_at FROM webhook_deliveries WHERE endpoint_id = ? "
                "AND attempts = 0", pit)]
        # Its deliveries not yet tried wait with it: moved back past the second failure
        # (by WEBHOOK_RETRY_BASE_S, 30 s; the sender does it right after recording that
        # attempt), not tried one after another every 0.3 s.
        await until(lambda: all(n >= second_failure + 29_000 for n in untried()), 20,
                    "the untried deliveries moved back")
        assert len(untried()) >= 17, untried()
        # The other tenant's endpoint was not slowed: everything delivered.
        assert _rows(edge, "SELECT DISTINCT state FROM webhook_deliveries "
                     "WHERE endpoint_id = ?", healthy) == [("delivered",)]

"""The real edge app (``create_app``) on a local port, against the session's redis-server and a
SQLite file of the test's own (or the STORE_URL given), with a fresh key prefix: what it leaves
behind is easy to see."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from services.edge.app import create_app
from services.edge.settings import EdgeSettings
from shared.config import Env
from shared.keys import Keys
from shared.store import make_store
from tests.integration.redis_switches import RAW


@dataclass
class EdgeUnderTest:
    client: TestClient
    settings: EdgeSettings
    redis: aioredis.Redis
    store_path: Path

    @property
    def prefix(self) -> str:
        return self.settings.common.redis_prefix

    async def redis_keys(self) -> list[str]:
        """Every key under this edge's prefix (all of them share the ``{prefix}`` hash tag),
        but the deployment id, which the edge writes once at start-up, not per request."""
        start_up = Keys(self.prefix).deployment
        return sorted([k async for k in self.redis.scan_iter(match=f"{{{self.prefix}}}:*")
                       if k != start_up])

    def store_rows(self, table: str) -> int:
        conn = sqlite3.connect(self.store_path)
        try:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        finally:
            conn.close()


_migrated: list[Path] = []  # a SQLite store migrated once per process, in the first test's tmp


async def migrated_sqlite(tmp: Path) -> str:
    """A new SQLite store file in ``tmp`` with every migration in place: a copy of one file
    migrated once per process (migrating each edge's new file took 15-30 ms of each test)."""
    if not _migrated or not _migrated[0].exists():  # the first, or its test removed it
        template = tmp / "migrated-template.db"
        store = make_store(str(template))
        await store.open()
        await store.close()
        _migrated[:] = [template]
    path = tmp / f"edge-{uuid.uuid4().hex[:6]}.db"
    shutil.copyfile(_migrated[0], path)
    return str(path)


@contextlib.asynccontextmanager
async def running_edge(redis_url: str, tmp: Path, **env: str) -> AsyncIterator[EdgeUnderTest]:
    values = {"REDIS_URL": redis_url, "REDIS_PREFIX": "e" + uuid.uuid4().hex[:10],
              "SSE_KEEPALIVE_S": "0.2", "REDIS_OVERRIDES": RAW, **env}
    if "STORE_URL" not in values:
        values["STORE_URL"] = await migrated_sqlite(tmp)
    settings = EdgeSettings.from_env(Env(values))
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield EdgeUnderTest(client, settings, r, Path(settings.common.store_url.get()))
    finally:
        await client.close()
        await r.aclose()

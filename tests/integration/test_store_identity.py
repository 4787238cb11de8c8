"""The store and Redis carry one deployment id; a service refuses a store that is not its
deployment's, and never starts an empty database beside a live deployment (issue 10)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared import redis_conn
from shared.keys import Keys
from shared.redis_conn import RedisClient
from shared.store import Store, make_store
from shared.store_check import DEPLOYMENT, StoreCheck, StoreRefused, check_identity


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[RedisClient]:
    client = redis_conn.connect(redis_url, max_connections=4)
    yield client
    await client.aclose()


async def _store(path: Path) -> Store:
    store = make_store(str(path))
    await store.open()
    return store


async def test_a_new_deployment_gets_one_id_in_both(tmp_path: Path, redis: RedisClient) -> None:
    keys = Keys("t" + uuid.uuid4().hex[:10])
    a, b = await _store(tmp_path / "s.db"), await _store(tmp_path / "s.db")
    try:
        first = await check_identity(a, redis, keys)
        assert await check_identity(b, redis, keys) == first  # a second service agrees
        assert await redis.get(keys.deployment) == first == await a.get_meta(DEPLOYMENT)
    finally:
        await a.close()
        await b.close()


async def test_redis_that_lost_its_data_adopts_the_stores_id(
        tmp_path: Path, redis: RedisClient) -> None:
    keys = Keys("t" + uuid.uuid4().hex[:10])
    store = await _store(tmp_path / "s.db")
    try:
        known = await check_identity(store, redis, keys)
        await redis.delete(keys.deployment)  # a Redis restarted without persistence
        assert await check_identity(store, redis, keys) == known
        assert await redis.get(keys.deployment) == known
    finally:
        await store.close()


async def test_an_empty_store_beside_a_live_deployment_is_refused(
        tmp_path: Path, redis: RedisClient) -> None:
    keys = Keys("t" + uuid.uuid4().hex[:10])
    old = await _store(tmp_path / "old.db")
    new = await _store(tmp_path / "new.db")  # the file was deleted: a new one was made
    try:
        known = await check_identity(old, redis, keys)
        with pytest.raises(StoreRefused, match="has no deployment id") as refused:
            await check_identity(new, redis, keys)
        assert known in str(refused.value) and "\n" not in str(refused.value)
        assert await new.get_meta(DEPLOYMENT) is None  # nothing adopted by the empty store
    finally:
        await old.close()
        await new.close()


async def test_another_deployments_store_is_refused(tmp_path: Path, redis: RedisClient) -> None:
    keys_a, keys_b = Keys("t" + uuid.uuid4().hex[:10]), Keys("t" + uuid.uuid4().hex[:10])
    a, b = await _store(tmp_path / "a.db"), await _store(tmp_path / "b.db")
    try:
        await check_identity(a, redis, keys_a)
        await check_identity(b, redis, keys_b)
        with pytest.raises(StoreRefused, match="refusing to mix two deployments"):
            await check_identity(b, redis, keys_a)
    finally:
        await a.close()
        await b.close()


async def test_health_names_a_deleted_replaced_or_corrupt_store(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await _store(path)
    try:
        check = StoreCheck(store, interval_s=0)
        assert await check.problem() is None
        path.rename(tmp_path / "moved.db")
        assert (await check.problem() or "").startswith("deleted")
        (tmp_path / "moved.db").rename(path)
        assert await check.problem() is None
        conn = sqlite3.connect(path)  # pages into the main file, as a checkpoint puts them
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        with path.open("r+b") as f:  # garbage over every page but the first
            f.seek(4096)
            f.write(b"\xa5" * (path.stat().st_size - 4096))
        assert (await check.problem() or "").startswith("corrupt")
        path.unlink()
        path.write_bytes(b"")
        assert (await check.problem() or "").startswith("replaced")
    finally:
        await store.close()

"""The store and Redis carry one deployment id; a service refuses a store that is not its
deployment's, and never starts an empty database beside a live deployment (issue 10); a
running processor writes nothing into a SQLite file that is no longer at STORE_PATH
(issue 25)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from harness.waiting import until
from shared import redis_conn
from shared.keys import Keys
from shared.redis_conn import RedisClient
from shared.store import Store, make_store
from shared.store_check import DEPLOYMENT, StoreCheck, StoreRefused, check_identity
from tests.integration.kit import QUIET, Core, mid_stream, stopped


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


@pytest.mark.sqlite_only  # a networked store cannot be deleted beneath a process
@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_running_processor_writes_nothing_into_a_store_file_no_longer_in_place(
        core: Core, store_url: str, how: str) -> None:
    """The file at STORE_PATH goes away (the probe's rm) or is replaced by another database
    while a task streams: its answer is not written into
    the old file, the processor stops taking work and leaves the pool, and once the file is
    back, the row is written and the task succeeds."""
    path = Path(store_url)
    away = path.with_name("away.db")
    tid = await core.submit({"content_tokens": 30, "tokens_per_s": 60, **QUIET})
    await core.coordinator().run_burst()
    processor = core.processor()
    # Not in burst mode: a burst run stops once its task has succeeded, and leaves the pool as
    # it stops, so "back in the pool" could be over before it was looked at (a flake under
    # load). This run lasts until the test stops it.
    running = asyncio.create_task(processor.run())
    try:
        await mid_stream(core, tid)
        refused = store_errors()
        move(path, away)  # the connections keep the file they opened (its inode)
        if how == "replaced":  # by a database made elsewhere: SQLite never opens it here,
            # where it would take the old file's -wal as its own
            other = path.parent / "elsewhere" / "store.db"
            empty = make_store(str(other))
            await empty.open()
            await empty.close()
            move(other, path)

        async def settled_or_refused() -> bool:
            status = await core.redis.hget(core.keys.task(tid), "status")
            return status == "succeeded" or store_errors() > refused

        await until(settled_or_refused, 10, "the write to land or be refused")
        # Before: "succeeded", its row in the file no one would open again.
        assert await core.redis.hget(core.keys.task(tid), "status") == "running"
        assert await core.store.get_task(tid) is None  # nothing in the old file either

        async def out_of_the_pool() -> bool:
            alive = await core.redis.zscore(core.keys.processors_alive, processor.name)
            return processor.free == 0 and alive is None

        await until(out_of_the_pool, 10, "the processor to leave the pool")
        if how == "replaced":
            move(path, path.with_name("replacement.db"))
        move(away, path)

        async def succeeded() -> bool:
            return await core.redis.hget(core.keys.task(tid), "status") == "succeeded"

        # the next of the write's retries, 5 s apart
        await until(succeeded, 20, "the task to succeed")
        row = await core.store.get_task(tid)
        assert row is not None and row["status"] == "succeeded"
        await until(lambda: core.redis.zscore(core.keys.processors_alive, processor.name), 10,
                    "the processor back in the pool")
    finally:
        processor.stop()
        await stopped(core, running)


def move(src: Path, dst: Path) -> None:
    src.rename(dst)


def store_errors() -> float:
    return REGISTRY.get_sample_value("sluice_store_errors_total") or 0.0

"""The PostgreSQL store through outages: a real server killed with -9 and restarted, and a
connection cut in the middle of a transaction."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

import asyncpg
import pytest

from harness.postgres import PostgresServer, alive
from harness.waiting import until
from shared.store import StoreUnavailable, make_store
from shared.store_postgres import PostgresStore
from tests.integration.test_store_contract import task


async def opened(url: str, patience_s: float | None) -> PostgresStore:
    store = make_store(url, pool_size=4, patience_s=patience_s)
    assert isinstance(store, PostgresStore)
    await store.open()
    return store


async def test_a_kill_takes_every_backend_with_it(own_postgres: PostgresServer) -> None:
    """What the outage tests rely on: after kill(), no pooled connection answers once more
    (each backend is a session leader of its own, so killing the postmaster's group does not
    reach it; left alone, it ends only once it notices the postmaster is gone)."""
    conn = await asyncpg.connect(own_postgres.url())
    try:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        own_postgres.kill()
        assert not alive(backend)
    finally:
        conn.terminate()


async def test_a_finished_result_waits_out_an_outage_and_lands_once(
        own_postgres: PostgresServer) -> None:
    url = await asyncio.to_thread(own_postgres.new_database)
    store = await opened(url, patience_s=None)  # what a processor runs with
    try:
        await store.save_task(task("tsk_before"))
        own_postgres.kill()
        saving = asyncio.create_task(store.save_task(task("tsk_during", fence=4)))
        await until(lambda: store.failures >= 3, 30, "the write to be retried")
        assert not saving.done()  # kept, not dropped, while the database is away
        await asyncio.to_thread(own_postgres.start)
        assert await asyncio.wait_for(saving, 30) is True
        assert await store.get_task("tsk_during") == asdict(task("tsk_during", fence=4))
        assert await store.count("tasks") == 2
    finally:
        await store.close()


async def test_an_impatient_caller_gets_store_unavailable(own_postgres: PostgresServer) -> None:
    url = await asyncio.to_thread(own_postgres.new_database)
    store = await opened(url, patience_s=0.2)  # impatient, as the edge is (STORE_PATIENCE_S)
    try:
        own_postgres.kill()
        for call in (store.get_task("tsk_1"), store.list_failed("acme", 5),
                     store.get_idempotency_key("acme", "k"), store.ping(),
                     store.save_idempotency_key("acme", "k", "tsk_1", "h")):
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(call, 10)
        await asyncio.to_thread(own_postgres.start)
        assert await store.get_task("tsk_1") is None  # the pool reconnects by itself
    finally:
        await store.close()


async def test_a_connection_cut_mid_transaction_reruns_the_whole_step(pg_url: str) -> None:
    """A group of writes blocks on a row another session holds; its connection is then
    terminated (what a restart or a failover does): the group is rolled back by PostgreSQL
    and applied again as a whole, every write answered once and every row there once."""
    store = await opened(pg_url, patience_s=None)
    holder = await asyncpg.connect(pg_url)
    try:
        await store.save_task(task("tsk_locked", fence=1))
        lock = holder.transaction()
        await lock.start()
        await holder.execute("SELECT 1 FROM tasks WHERE id = 'tsk_locked' FOR UPDATE")
        group = [task(f"tsk_g{i}", fence=2) for i in range(5)] + [task("tsk_locked", fence=2)]
        saving = asyncio.gather(*(store.save_task(r) for r in group))
        waiting = "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        pids = await until(lambda: holder.fetch(waiting), 20, "the group to reach the locked row")
        # Half the group is written inside the open transaction; nobody else sees it.
        assert await holder.fetchval("SELECT COUNT(*) FROM tasks WHERE fence = 2") == 0
        await holder.execute("SELECT pg_terminate_backend($1)", pids[0]["pid"])
        await lock.rollback()
        assert await asyncio.wait_for(saving, 30) == [True] * 6
        assert store.failures >= 1
        assert await holder.fetchval("SELECT COUNT(*) FROM tasks WHERE fence = 2") == 6
        assert await store.count("tasks") == 6
    finally:
        await holder.close()
        await store.close()


async def test_closing_during_an_outage_gives_pending_writes_an_error_not_a_hang(
        own_postgres: PostgresServer) -> None:
    """A processor stopping while the database is away: its unwritten results fail (the
    tasks stay unfinished in Redis, for another processor to take over), close() returns."""
    url = await asyncio.to_thread(own_postgres.new_database)
    store = await opened(url, patience_s=None)
    store.close_wait_s = 0.5
    own_postgres.kill()
    saving = asyncio.gather(*(store.save_task(task(f"tsk_{i}")) for i in range(3)),
                            return_exceptions=True)
    await until(lambda: store.failures >= 1, 30, "the write to be retried")
    await asyncio.wait_for(store.close(), 15)
    results = await asyncio.wait_for(saving, 5)
    assert all(isinstance(r, StoreUnavailable) for r in results), results

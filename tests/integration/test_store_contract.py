"""Every Store method's contract, on both backends (a real SQLite file, a real PostgreSQL):
whatever STORE_URL picks, callers see the same answers."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import asdict, replace

import pytest

from shared.store import BatchRow, Store, TaskRow, make_store


async def opened(url: str, **kw: object) -> Store:
    store = make_store(url, **kw)  # type: ignore[arg-type]
    await store.open()
    return store


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await opened(store_url, pool_size=4, patience_s=5)
    yield s
    await s.close()


def task(task_id: str = "tsk_1", fence: int = 1, **kw: object) -> TaskRow:
    base = TaskRow(
        id=task_id, tenant="acme", status="succeeded", model="mock-r1", request='{"p":1}',
        content="hello", reasoning_content="think", finish_reason="stop", prompt_tokens=3,
        completion_tokens=5, total_tokens=8, attempts=1, error=None, batch_id="bat_1",
        processor="proc-a", fence=fence, created_at=1_700_000_000_000,
        started_at=1_700_000_000_100, completed_at=1_700_000_000_200)
    return replace(base, **kw)  # type: ignore[arg-type]


async def test_a_saved_task_reads_back_column_for_column(store: Store) -> None:
    row = task(content="ünïcode ✓", error=None, prompt_tokens=None)
    assert await store.save_task(row) is True
    assert await store.get_task(row.id) == asdict(row)
    assert await store.get_task("tsk_unknown") is None


async def test_only_a_strictly_higher_fence_replaces_a_row(store: Store) -> None:
    assert await store.save_task(task(fence=5, content="five"))
    assert await store.save_task(task(fence=3, content="three")) is False
    assert await store.save_task(task(fence=5, content="five again")) is False
    assert (await store.get_task("tsk_1"))["content"] == "five"  # type: ignore[index]
    assert await store.save_task(task(fence=6, content="six", status="failed"))
    got = await store.get_task("tsk_1")
    assert got is not None and (got["content"], got["status"], got["fence"]) == \
        ("six", "failed", 6)


async def test_save_if_absent_never_replaces(store: Store) -> None:
    assert await store.save_task_if_absent(task(fence=1, content="first"))
    assert await store.save_task_if_absent(task(fence=9, content="second")) is False
    assert (await store.get_task("tsk_1"))["content"] == "first"  # type: ignore[index]


async def test_a_forgotten_task_is_a_tombstone_no_late_write_brings_back(
        store: Store) -> None:
    assert await store.save_task(task(fence=3))
    assert await store.save_idempotency_key("acme", "k1", "tsk_1", "h")
    assert await store.forget_task("tsk_1", "other", "deleted", 1) is False  # not its tenant's
    assert (await store.get_task("tsk_1"))["status"] == "succeeded"  # type: ignore[index]
    assert await store.get_idempotency_key("acme", "k1") == ("tsk_1", "h")
    assert await store.forget_task("tsk_1", "acme", "deleted", 1)
    gone = await store.get_task("tsk_1")
    assert gone is not None and gone["status"] == "deleted" and gone["request"] == "{}"
    assert (gone["content"], gone["reasoning_content"], gone["error"]) == (None, None, None)
    assert await store.get_idempotency_key("acme", "k1") is None
    # A holder's late write, and a first write, are refused: the tombstone stays.
    assert await store.save_task(task(fence=10**12)) is False
    assert await store.save_task_if_absent(task()) is False
    # A task with no row yet (cancelled before it ran) gets the tombstone as its first row.
    assert await store.forget_task("tsk_2", "acme", "deleted", 1)
    assert await store.save_task_if_absent(task("tsk_2")) is False
    assert (await store.get_task("tsk_2"))["status"] == "deleted"  # type: ignore[index]


async def test_batches_keep_the_first_claim_and_take_the_completion(store: Store) -> None:
    b = BatchRow(id="bat_1", size=3, reason="size", processor="proc-a", created_at=10,
                 claimed_at=20, completed_at=None)
    assert await store.save_batch(b)
    assert await store.save_batch(replace(b, processor="proc-b", claimed_at=99,
                                          completed_at=50))
    assert await store.save_batch(replace(b, completed_at=None))
    assert await store.count("batches") == 1
    # No read of batches in the interface: the services only write them.
    rows = await _batch(store, "bat_1")
    assert rows == (3, "size", "proc-a", 10, 20, 50)


async def _batch(store: Store, batch_id: str) -> tuple[object, ...]:
    [row] = await store.fetch("SELECT size, reason, processor, created_at, claimed_at, "
                              "completed_at FROM batches WHERE id = ?", batch_id)
    return tuple(row.values())


async def test_the_first_idempotency_key_wins(store: Store) -> None:
    assert await store.get_idempotency_key("acme", "k1") is None
    assert await store.save_idempotency_key("acme", "k1", "tsk_a", "hash-a")
    assert await store.save_idempotency_key("acme", "k1", "tsk_b", "hash-b") is False
    assert await store.save_idempotency_key("other", "k1", "tsk_c", "hash-c")
    assert await store.get_idempotency_key("acme", "k1") == ("tsk_a", "hash-a")
    assert await store.get_idempotency_key("other", "k1") == ("tsk_c", "hash-c")


async def test_dead_letters_are_the_tenants_failed_tasks_newest_first(store: Store) -> None:
    for i in range(5):
        await store.save_task(task(f"tsk_f{i}", status="failed", completed_at=100 + i))
    await store.save_task(task("tsk_ok", status="succeeded"))
    await store.save_task(task("tsk_other", status="failed", tenant="other"))
    got = await store.list_failed("acme", 3)
    assert [r["id"] for r in got] == ["tsk_f4", "tsk_f3", "tsk_f2"]
    assert got[0] == asdict(task("tsk_f4", status="failed", completed_at=104))
    assert [r["id"] for r in await store.list_failed("other", 50)] == ["tsk_other"]
    assert await store.list_failed("nobody", 50) == []


async def test_count_and_ping(store: Store) -> None:
    await store.ping()
    assert await store.count("tasks") == 0
    await store.save_task(task("tsk_1"))
    await store.save_task(task("tsk_2"))
    assert await store.count("tasks") == 2
    with pytest.raises(ValueError):
        await store.count("tasks; DROP TABLE tasks")


async def test_writes_arriving_together_share_a_transaction(store: Store) -> None:
    before = store.transactions
    results = await asyncio.gather(*(store.save_task(task(f"tsk_{i}")) for i in range(60)))
    assert all(results)
    assert await store.count("tasks") == 60
    assert store.transactions - before < 60 / 4  # group commit: far fewer than one each


async def test_reopening_applies_no_migration_twice(store_url: str) -> None:
    for _ in range(2):
        s = await opened(store_url, patience_s=5)
        await s.save_task(task(f"tsk_{s.transactions}_{random.random()}"))
        await s.close()
    s = await opened(store_url, patience_s=5)
    try:
        assert await s.count("tasks") == 2
    finally:
        await s.close()


async def test_concurrent_fenced_upserts_from_8_connections_the_highest_wins(
        store_url: str) -> None:
    """8 writers, each its own store (its own connections), race on the same 40 task ids
    with shuffled fences: every row ends with the highest fence, whatever the order."""
    stores = [await opened(store_url, pool_size=2, patience_s=30) for _ in range(8)]
    ids = [f"tsk_race{i}" for i in range(40)]
    fences = list(range(1, 41))

    async def writer(n: int, s: Store) -> None:
        order = [(tid, f) for tid in ids for f in fences if f % 8 == n]
        random.Random(n).shuffle(order)
        for tid, fence in order:
            await s.save_task(task(tid, fence=fence, processor=f"proc-{fence}",
                                   content=f"fence {fence}"))
    try:
        await asyncio.gather(*(writer(n, s) for n, s in enumerate(stores)))
        for tid in ids:
            row = await stores[0].get_task(tid)
            assert row is not None
            assert (row["fence"], row["processor"], row["content"]) == \
                (40, "proc-40", "fence 40")
    finally:
        for s in stores:
            await s.close()


async def test_text_with_nul_is_stored_not_refused(store: Store) -> None:
    """SQLite keeps NUL in text; PostgreSQL cannot, and stores U+FFFD in its place."""
    assert await store.save_task(task("tsk_nul\x00", model="m\x00x", content="a\x00b"))
    row = await store.get_task("tsk_nul\x00")
    assert row is not None
    nul = "\x00" if store.backend == "sqlite" else "\ufffd"
    assert (row["model"], row["content"]) == (f"m{nul}x", f"a{nul}b")
    assert await store.save_idempotency_key("acme", "k\x00", "tsk_nul\x00", "h")
    assert await store.get_idempotency_key("acme", "k\x00") == (f"tsk_nul{nul}", "h")


async def test_a_row_the_database_refuses_fails_alone(store: Store) -> None:
    """Rows group-committed beside a bad one still land; only its writer gets the error."""
    bad = task("tsk_bad", status=None)  # type: ignore[arg-type]  # NOT NULL column
    results = await asyncio.gather(store.save_task(task("tsk_a")), store.save_task(bad),
                                   store.save_task(task("tsk_b")), return_exceptions=True)
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], Exception)
    assert await store.count("tasks") == 2


async def test_the_fence_holds_for_rows_committed_together(store: Store) -> None:
    """A group of upserts (one statement on PostgreSQL) answers row by row."""
    await store.save_task(task("tsk_low", fence=5, content="kept"))
    await store.save_task(task("tsk_high", fence=5, content="old"))
    before = store.transactions
    results = await asyncio.gather(
        store.save_task(task("tsk_low", fence=3, content="stale")),
        store.save_task(task("tsk_high", fence=7, content="new")),
        store.save_task(task("tsk_fresh", fence=1, content="fresh", prompt_tokens=None)),
        store.save_batch(BatchRow(id="bat_9", size=3, reason="size", processor="p",
                                  created_at=1, claimed_at=2, completed_at=None)))
    assert results == [False, True, True, True]
    assert store.transactions == before + 1  # they did share one transaction
    contents = {i: (await store.get_task(i))["content"]  # type: ignore[index]
                for i in ("tsk_low", "tsk_high", "tsk_fresh")}
    assert contents == {"tsk_low": "kept", "tsk_high": "new", "tsk_fresh": "fresh"}
    assert await store.get_task("tsk_fresh") == asdict(
        task("tsk_fresh", fence=1, content="fresh", prompt_tokens=None))

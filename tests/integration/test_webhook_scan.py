"""The webhook scanner reads the tasks table as a log (``WebhookStore.finished_since``): every
finished task once, in commit order, whatever the page size, on both stores. On PostgreSQL,
where transactions commit in any order, a row committed after a later one was read is still
read: the scanner waits below the oldest transaction still running."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import pytest

from services.edge.webhooks.store import WebhookStore
from shared.store import Store, TaskRow, make_store

ROW = TaskRow(id="", tenant="acme", status="succeeded", model="mock-r1", request="{}",
              content="hi", reasoning_content=None, finish_reason="stop", prompt_tokens=1,
              completion_tokens=1, total_tokens=2, attempts=1, error=None, batch_id=None,
              processor="p1", fence=1, created_at=1, started_at=2, completed_at=3)


def task(task_id: str) -> TaskRow:
    return replace(ROW, id=task_id)


async def opened(url: str) -> Store:
    store = make_store(url, pool_size=4, patience_s=5)
    await store.open()
    return store


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await opened(store_url)
    yield s
    await s.close()


async def read_all(hooks: WebhookStore, position: int, page: int) -> tuple[list[str], int]:
    """Page after page until the scanner has nothing more: the task ids read, and the end."""
    ids: list[str] = []
    while True:
        scanned = await hooks.finished_since(position, page)
        if scanned.position == position:
            return ids, position
        ids += [t.id for t in scanned.tasks]
        position = scanned.position


async def test_every_task_once_in_commit_order_whatever_the_page(store: Store) -> None:
    hooks = WebhookStore(store)
    start = await hooks.cursor()
    await store.save_task(task("tsk_a"))
    await asyncio.gather(*(store.save_task(task(f"tsk_g{n}")) for n in range(3)))  # one commit
    await store.write_together([("INSERT INTO batch_lines (batch_id, line, custom_id, task_id, "
                                 "request) VALUES ('batch_1', 0, 'c', 'tsk_line', '{}')", ())])
    await store.save_task(task("tsk_line"))  # a batch line: its batch has events of its own
    await store.save_task(task("tsk_z"))
    expected = ["tsk_a", "tsk_g0", "tsk_g1", "tsk_g2", "tsk_z"]
    ends = set()
    for page in (1, 2, 100):
        ids, end = await read_all(hooks, start, page)
        assert ids == expected, page
        ends.add(end)
    assert len(ends) == 1 and end > start
    await store.save_task(replace(task("tsk_a"), fence=2, content="again"))
    assert (await hooks.finished_since(end, 100)).position == end, \
        "a row replaced by a higher fence keeps its place (its event was sent)"


async def test_a_row_committed_late_is_still_read(pg_url: str) -> None:
    store = await opened(pg_url)
    hooks = WebhookStore(store)
    start = await hooks.cursor()
    early = await asyncpg.connect(pg_url)
    try:
        tx = early.transaction()
        await tx.start()  # takes its transaction id first, commits last
        await early.execute("INSERT INTO tasks (id, status, request, created_at) "
                            "VALUES ('tsk_early', 'succeeded', '{}', 1)")
        await store.save_task(task("tsk_late"))
        assert await store.get_task("tsk_late") is not None
        waiting = await hooks.finished_since(start, 100)
        assert (waiting.tasks, waiting.position) == ([], start), \
            "nothing is read past a transaction still running"
        await tx.commit()
        assert (await read_all(hooks, start, 100))[0] == ["tsk_early", "tsk_late"]
    finally:
        await early.close()
        await store.close()

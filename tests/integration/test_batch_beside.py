"""A 1,000-line batch beside interactive tasks: the interactive tasks' queue wait (started_at -
created_at of their rows) stays within 2x of what it is on an idle system.

What keeps it there: BATCH_LINES_IN_FLIGHT bounds every batch's lines queued or running at
once, below the processors' slots, so an interactive task always finds a free slot and at most
that many batch lines ahead of it in the queue. (Issue 11's priority would let it jump them;
it is not on main yet.) The numbers are printed for the record."""

from __future__ import annotations

import functools
import statistics
import time
from pathlib import Path

from harness.waiting import until
from tests.integration.batch_kit import KEY_A, BatchRig, batch_rig, line
from tests.integration.kit import Core

AUTH = {"Authorization": f"Bearer {KEY_A}"}
LINES = 1000
INTERACTIVE = 30


async def interactive_waits(rig: BatchRig, label: str) -> list[int]:
    """Submit tasks one after another (each once the previous has finished), as a user would;
    their queue waits in ms."""
    waits = []
    for n in range(INTERACTIVE):
        r = await rig.edge.client.post("/api/tasks", headers=AUTH, json={
            "prompt": f"{label} {n}",
            "metadata": {"mock": {"content_tokens": 3, "reasoning_tokens": 0}}})
        task_id = (await r.json())["id"]
        row = await until(functools.partial(rig.core.store.get_task, task_id), 30,
                          f"task {label} {n} to be stored", interval=0.005)
        assert row["status"] == "succeeded"
        waits.append(int(row["started_at"]) - int(row["created_at"]))
    return waits


async def test_a_1000_line_batch_leaves_interactive_queue_wait_within_2x(
        core: Core, tmp_path: Path) -> None:
    async with batch_rig(core, tmp_path, concurrency=16, BATCH_LINES_IN_FLIGHT="8") as rig:
        idle = await interactive_waits(rig, "idle")
        started = time.monotonic()
        lines = [line(f"b{n}", f"batch line {n}", tokens=20, tokens_per_s=2000)
                 for n in range(LINES)]
        batch = await rig.run(lines)
        await rig.wait(batch.id, ("in_progress",))
        busy = await interactive_waits(rig, "busy")
        during = await rig.client.batches.retrieve(batch.id)
        assert during.status == "in_progress", "the batch ran all along the measurement"
        done = await rig.wait(batch.id, within_s=300)
        wall = time.monotonic() - started
        assert done.status == "completed" and done.request_counts is not None
        assert done.request_counts.completed == LINES
        idle_p50, busy_p50 = statistics.median(idle), statistics.median(busy)
        print(f"\n1,000-line batch: {wall:.1f} s wall; interactive queue wait p50 idle "
              f"{idle_p50:.0f} ms, beside the batch {busy_p50:.0f} ms "
              f"(max {max(idle)} / {max(busy)} ms)")
        # A floor of 20 ms keeps a near-zero idle wait from making the ratio meaningless.
        assert busy_p50 <= 2 * max(idle_p50, 20), (idle, busy)

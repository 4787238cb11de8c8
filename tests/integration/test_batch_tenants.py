"""No tenant's batch can hold back another's (issue 25, findings 1 and 3), on each store.

- A client cannot take the idempotency keys the batch runner gives its lines (the attack of the
  issue: a tenant posts ordinary tasks under ``~batch/<its batch id>/<n>`` before the runner
  queues those lines, which then never ran and held every tenant's line budget for good).
- A line whose key was taken anyway (before the upgrade) or whose task was lost fails alone,
  with a code that says so, and its batch ends; cancel and expiry included.
- BATCH_LINES_IN_FLIGHT is shared among the tenants that have batches running, by their
  weights: a small batch starts within one line-time whatever a big one holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from harness.waiting import until
from shared import tasks
from shared.steps import Created
from shared.timeutil import now_ms
from tests.integration.batch_kit import KEY_B, batch_rig, line, runner_paused
from tests.integration.kit import NO_LIMITS, QUEUED_EVENT, Core, request

AUTH_B = {"Authorization": f"Bearer {KEY_B}"}


def runner_key(batch_id: str, n: int) -> str:
    """The key the runner gives line ``n`` of a batch (as it did when the issue was filed)."""
    return f"~batch/{batch_id}/{n}"


async def test_a_client_cannot_take_the_runners_keys_and_stall_everyones_batches(
        core: Core, tmp_path: Path) -> None:
    async with batch_rig(core, tmp_path, BATCH_LINES_IN_FLIGHT="4") as rig:
        async with runner_paused(rig):
            evil = await rig.run([line(f"e{n}", f"evil {n}") for n in range(4)], rig.other)
            answers = []
            for n in range(4):  # ordinary submits under the keys of the runner's lines
                headers = {**AUTH_B, "Idempotency-Key": runner_key(evil.id, n)}
                if n % 2:
                    r = await rig.edge.client.post("/v1/chat/completions", headers=headers,
                                                   json=request(prompt=f"forged {n}"))
                else:
                    r = await rig.edge.client.post("/api/tasks", headers=headers,
                                                   json={"prompt": f"forged {n}"})
                answers.append((r.status, await r.json()))
            victim = await rig.run([line("v0", "victim 0"), line("v1", "victim 1")])
        done = await rig.wait(victim.id, within_s=20)
        assert done.status == "completed" and done.request_counts is not None
        assert done.request_counts.completed == 2
        theirs = await rig.wait(evil.id, within_s=20, client=rig.other)
        assert theirs.status == "completed" and theirs.request_counts is not None
        assert theirs.request_counts.completed == 4, "the forger's own lines ran too"
        for status, body in answers:
            assert status == 422, body
            error = body["error"]  # /api names the field "field", /v1 (OpenAI's) "param"
            assert error.get("field", error.get("param")) == "Idempotency-Key"
            assert error["code"] == "invalid_request"
            assert "reserved" in body["error"]["message"]
        assert await core.store.count("tasks") == 6, "nothing of a refused submit was stored"


async def test_a_line_whose_key_was_taken_fails_alone_and_its_batch_completes(
        core: Core, tmp_path: Path) -> None:
    async with batch_rig(core, tmp_path, BATCH_LINES_IN_FLIGHT="4") as rig:
        async with runner_paused(rig):
            evil = await rig.run([line(f"e{n}", f"evil {n}") for n in range(4)], rig.other)
            # Keys taken under the runner's nose, as a client could before the prefix was
            # reserved: line 1's with another body (Conflict), line 3's with the runner's own
            # body hash but another task (Existing, another id).
            for n, body_hash in ((1, "forged"), (3, "line")):
                result = await core.steps.submit(
                    task_id=tasks.new_task_id(), tenant="beta",
                    request_json=orjson.dumps(request(prompt=f"forged {n}")), model="mock-r1",
                    now=now_ms(), idem_key=runner_key(evil.id, n), body_hash=body_hash,
                    idempotency_ttl_s=600, first_event=QUEUED_EVENT, task_ttl_s=600,
                    limits=NO_LIMITS)
                assert isinstance(result, Created)
            victim = await rig.run([line("v0", "victim 0"), line("v1", "victim 1")])
        done = await rig.wait(victim.id, within_s=20)
        assert done.status == "completed" and done.request_counts is not None
        assert done.request_counts.completed == 2
        theirs = await rig.wait(evil.id, within_s=20, client=rig.other)
        assert theirs.status == "completed" and theirs.request_counts is not None
        counts = theirs.request_counts
        assert (counts.total, counts.completed, counts.failed) == (4, 2, 2)
        out = await rig.jsonl(theirs.output_file_id, rig.other)
        errors = await rig.jsonl(theirs.error_file_id, rig.other)
        assert sorted(o["custom_id"] for o in out) == ["e0", "e2"]
        assert sorted(e["custom_id"] for e in errors) == ["e1", "e3"]
        for e in errors:
            assert e["response"] is None
            assert e["error"]["code"] == "batch_line_key_taken", e


@pytest.mark.parametrize("then", ["runs_on", "cancelled"])
async def test_a_line_whose_task_was_lost_fails_and_its_batch_ends(
        core: Core, tmp_path: Path, then: str) -> None:
    # One task per batch entry: a processor of one slot claims one entry and runs every task
    # in it, so "lost", flushed with "slow" into one entry (under load its line came within
    # the coordinator's 20 ms), ran beside it and was never seen waiting. In its own entry it
    # waits (queued, then batched) while "slow" holds the one slot for a second.
    async with batch_rig(core, tmp_path, concurrency=1, batch_size=1,
                         BATCH_LINES_IN_FLIGHT="2") as rig:
        lines = [line("slow", "slow one", tokens=6, tokens_per_s=6),
                 line("lost", "lost one"), line("after", "after one")]
        batch = await rig.run(lines)

        async def waiting_line_task() -> str | None:
            rows = await core.store.fetch(
                "SELECT task_id FROM batch_lines WHERE batch_id = ? AND line = 1", batch.id)
            if not rows:
                return None
            task_id = str(rows[0]["task_id"])
            status = await core.redis.hget(core.keys.task(task_id), "status")
            return task_id if status in (tasks.QUEUED, tasks.BATCHED) else None
        lost_id = await until(waiting_line_task, 10, "the line's task waiting to run")
        # Redis loses the waiting task (a restart without persistence, an operator's DEL).
        await core.redis.delete(core.keys.task(lost_id), core.keys.events(lost_id))
        if then == "cancelled":
            await rig.client.batches.cancel(batch.id)
        done = await rig.wait(batch.id, within_s=30)
        assert done.status == ("completed" if then == "runs_on" else "cancelled"), done
        errors = {e["custom_id"]: e for e in await rig.jsonl(done.error_file_id)}
        assert errors["lost"]["error"]["code"] == "batch_line_lost"
        out = await rig.jsonl(done.output_file_id)
        every = sorted([o["custom_id"] for o in out] + list(errors))
        assert every == ["after", "lost", "slow"], "every line exactly once"


async def test_a_small_batch_starts_before_a_big_batch_of_another_tenant_goes_on(
        core: Core, tmp_path: Path) -> None:
    """Issue 25's case, smaller: tenant alpha's 40 lines of 0.5 s with 4 in flight, then
    tenant beta's 2 lines. Before, beta's lines waited for every alpha line to be queued."""
    async with batch_rig(core, tmp_path, concurrency=4, BATCH_LINES_IN_FLIGHT="4") as rig:
        big = await rig.run([line(f"a{n}", f"alpha {n}", tokens=5, tokens_per_s=10)
                             for n in range(40)])

        async def big_running() -> bool:
            return len(await core.mock_requests()) >= 4
        await until(big_running, 20, "big running")
        small = await rig.run([line("b0", "beta 0"), line("b1", "beta 1")], rig.other)
        done = await rig.wait(small.id, within_s=60, client=rig.other)
        assert done.status == "completed"
        # Beta's batch is done while alpha's goes on; the rest of alpha's lines would only
        # take time (30 more line-times): cancelled, each alpha line that started has its row
        # and its start (a line cancelled before it started is counted as starting now).
        assert (await rig.client.batches.retrieve(big.id)).status == "in_progress"
        await rig.client.batches.cancel(big.id)
        assert (await rig.wait(big.id, within_s=60)).status == "cancelled"
        starts = await started_at(core, "beta")
        assert len(starts) == 2
        ahead = [s for s in await started_at(core, "alpha") if s < max(starts)]
        print(f"\nalpha lines started before beta's last: {len(ahead)} of 40")
        # One line-time: the 4 alpha lines running when beta's batch came, and those that
        # started beside beta's as the 4 ended together.
        assert len(ahead) <= 12, f"{len(ahead)} of alpha's 40 lines started before beta's 2"


async def started_at(core: Core, tenant: str) -> list[int]:
    rows: list[dict[str, Any]] = await core.store.fetch(
        "SELECT started_at FROM tasks WHERE tenant = ?", tenant)
    return [int(r["started_at"]) for r in rows]

"""Log lines an operator can trust, captured as structlog renders them: no lease_lost warning
for a task that finished as its renewal went out (a real loss still warns), and a line when
Redis answers a loop again after failing."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError

from services.processor import leases
from services.processor.leases import Lease, LeaseKeeper
from shared import loops, tasks
from shared.keys import Keys
from shared.redis_conn import RedisClient
from shared.steps import Steps
from tests.integration import kit


def fresh(*modules: ModuleType) -> None:
    """Forget the module loggers' cached chain, so they log through the current one (structlog
    caches a logger's processors at its first use, which may predate this test)."""
    for module in modules:
        vars(module.log).pop("bind", None)


@pytest.fixture
def captured() -> Iterator[list[dict[str, Any]]]:
    fresh(leases, loops)
    with structlog.testing.capture_logs() as lines:
        yield lines
    fresh(leases, loops)


async def test_a_task_that_finished_during_a_renewal_logs_no_lost_lease(
        redis: RedisClient, keys: Keys, steps: Steps, captured: list[dict[str, Any]]) -> None:
    finished, stolen = [await kit.submit(steps) for _ in range(2)]
    keeper = LeaseKeeper(redis, steps, keys, "p1", 30_000)
    runs_told: list[str] = []
    for task_id in (finished, stolen):
        begun = await kit.begun(steps, task_id, token="tok-a")
        keeper.hold(Lease(task_id, "tok-a", begun.fence,
                          on_lost=lambda t=task_id: runs_told.append(t)))
    # One ends as its renewal goes out (complete.lua ends the lease with the task); the other's
    # lease is really taken by another holder.
    first, second = finished, stolen
    await kit.complete(steps, first, "tok-a")
    await redis.set(keys.lease(second), "tok-b")
    await keeper.renew_all()
    lost = [line for line in captured if line["event"] == "lease_lost"]
    assert [line["task_id"] for line in lost] == [second]
    assert lost[0]["log_level"] == "warning"
    assert sorted(runs_told) == sorted([first, second])  # both runs are told all the same
    assert await redis.hget(keys.task(first), "status") == tasks.SUCCEEDED


async def test_redis_answering_again_is_logged_once() -> None:
    calls = 0

    async def step() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RedisConnectionError("Connection refused")
        return "done"

    fresh(loops)
    with structlog.testing.capture_logs() as lines:
        assert await loops.until_redis_answers(step, "finish", task_id="tsk_x") == "done"
        assert await loops.until_redis_answers(step, "finish", task_id="tsk_x") == "done"
    events = [line["event"] for line in lines]
    assert events.count("redis_answers_again") == 1
    back = next(line for line in lines if line["event"] == "redis_answers_again")
    assert back["loop"] == "finish" and back["task_id"] == "tsk_x" and back["down_s"] >= 0

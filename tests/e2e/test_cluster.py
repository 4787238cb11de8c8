"""The pipeline end to end on a Redis Cluster of 3 masters: the same services, unchanged, given
``REDIS_URL=redis+cluster://...`` (or ``REDIS_CLUSTER=true``). The most telling tests of the
plain-Redis suite run here again as they are, plus what only a cluster shows: two deployments
(two REDIS_PREFIXes) whose keys live on different masters, side by side."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import tests.e2e.test_cancel as cancel
import tests.e2e.test_events as events
import tests.e2e.test_pipeline as pipeline
from harness.processes import ROOT, RedisClusterServers, running_stack
from harness.waiting import wait_for
from shared.keys import Keys
from tests.e2e.conftest import rows

# The store plays no part of its own here: on the first store only (tests/conftest.py).
pytestmark = pytest.mark.first_store_only

SAME_AS_ON_ONE_REDIS: list[Callable[[Path, str, Any], None]] = [
    pipeline.test_a_prompt_is_answered_with_content_and_reasoning,
    pipeline.test_timer_flushes_a_lone_task_on_time,
    pipeline.test_adaptive_flush_does_not_wait_for_the_timer,  # capacity news by pub/sub
    cancel.test_cancelling_a_running_task_closes_the_provider_stream_and_keeps_the_partial_answer,
    events.test_a_client_that_reconnects_with_last_event_id_misses_nothing_and_repeats_nothing,
    events.test_more_watched_tasks_than_reader_connections_only_wait_their_turn,
]


@pytest.mark.parametrize("body", SAME_AS_ON_ONE_REDIS,
                         ids=[f.__name__.removeprefix("test_")[:60] for f in SAME_AS_ON_ONE_REDIS])
def test_on_a_cluster(body: Callable[[Path, str, Any], None], tmp_path: Path,
                      redis_cluster_url: str, api_factory: Any) -> None:
    body(tmp_path, redis_cluster_url, api_factory)


def test_60_tasks_through_2_processors_and_2_coordinators(
        tmp_path: Path, redis_cluster_url: str, api_factory: Any) -> None:
    # Short leases and tasks that outlast several renewals: every lease is renewed in one
    # cluster pipeline of scripts (leases.py), which redis-py alone refuses (EVALSHA).
    env = {"PROCESSOR_CONCURRENCY": "4", "BATCH_SIZE": "3", "LOCK_TTL_MS": "1500"}
    slow = {"tokens_per_s": 20, "content_tokens": 40, "reasoning_tokens": 4}
    with running_stack(tmp_path, redis_cluster_url, processors=2, coordinators=2,
                       env=env) as stack:
        api = api_factory(stack.edge_url)
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda i: api.submit(
                {"prompt": f"task {i}", "metadata": {"mock": slow}}), range(60)))
        assert len(set(ids)) == 60
        for task_id in ids:
            assert api.wait_terminal(task_id, 120)["status"] == "succeeded"
        db = stack.store_path
        assert rows(db, "SELECT COUNT(*), COUNT(DISTINCT id) FROM tasks") == [(60, 60)]
        assert rows(db, "SELECT COUNT(*) FROM tasks WHERE status = 'succeeded'") == [(60,)]
        assert rows(db, "SELECT MAX(size) FROM batches")[0][0] <= 3
        sizes = rows(db, "SELECT batch_id, COUNT(*) FROM tasks GROUP BY batch_id")
        assert max(n for _, n in sizes) <= 3 and sum(n for _, n in sizes) == 60
        used = {p for (p,) in rows(db, "SELECT DISTINCT processor FROM tasks")}
        assert len(used) == 2, "work should spread over both processors"
        # No lease was lost on the way (a lost one means a second attempt elsewhere).
        assert rows(db, "SELECT MAX(attempts) FROM tasks") == [(1,)]
        assert len(stack.of("processor")) == 2, stack.logs()


def prefixes_on_two_masters(cluster: RedisClusterServers) -> tuple[str, str]:
    """Two fresh REDIS_PREFIXes whose hash tags hash to slots of different masters."""
    first = "c" + uuid.uuid4().hex[:10]
    while True:
        second = "c" + uuid.uuid4().hex[:10]
        if cluster.owner_of(Keys(second).tasks_stream) != cluster.owner_of(
                Keys(first).tasks_stream):
            return first, second


def keys_on(cluster: RedisClusterServers, port: int, prefix: str) -> list[str]:
    """The keys of one deployment that the master on ``port`` holds (SCAN is per node)."""
    out = cluster.cli(port, "--scan", "--pattern", "{" + prefix + "}:*")
    return out.split()


def test_two_deployments_live_on_different_masters_side_by_side(
        tmp_path: Path, redis_cluster: RedisClusterServers, api_factory: Any) -> None:
    a, b = prefixes_on_two_masters(redis_cluster)
    url = redis_cluster.url.replace("redis+cluster://", "redis://")  # the flag instead
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    with running_stack(tmp_path / "a", url, prefix=a, env={"REDIS_CLUSTER": "true"}) as sa, \
            running_stack(tmp_path / "b", url, prefix=b, env={"REDIS_CLUSTER": "true"}) as sb:
        apis = {a: api_factory(sa.edge_url), b: api_factory(sb.edge_url)}
        done = {p: [api.submit({"prompt": f"{p} {i}"}) for i in range(4)]
                for p, api in apis.items()}
        for p, api in apis.items():
            for task_id in done[p]:
                assert api.wait_terminal(task_id)["status"] == "succeeded"
        for stack in (sa, sb):
            assert rows(stack.store_path, "SELECT COUNT(*) FROM tasks") == [(4,)]
        owner = {p: redis_cluster.owner_of(Keys(p).tasks_stream) for p in (a, b)}
        assert owner[a] != owner[b]
        for p in (a, b):
            held = {port: keys_on(redis_cluster, port, p) for port in redis_cluster.ports}
            # Every key of the deployment is on its one master, none anywhere else...
            assert all(not ks for port, ks in held.items() if port != owner[p]), held
            mine = held[owner[p]]
            assert Keys(p).task(done[p][0]) in mine and Keys(p).tasks_stream in mine
            # ...and in one slot, which is what keeps every Lua script single-slot.
            slots = {redis_cluster.cli(owner[p], "CLUSTER", "KEYSLOT", k).strip() for k in mine}
            assert len(slots) == 1, slots
        # The container healthcheck of a processor reads its heartbeat through the cluster too.
        check = subprocess.run([sys.executable, "-m", "services.processor", "--check"],
                               cwd=ROOT, env=sa.env(PROCESSOR_NAME=_processor_name(sa)),
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr


def _processor_name(stack: Any) -> str:
    """The PROCESSOR_NAME the harness gave the stack's processor (``proc-<prefix>-<n>``)."""
    [svc] = stack.of("processor")
    return f"proc-{stack.prefix}-{svc.name.rsplit('-', 1)[1]}"




def test_a_full_master_stops_intake_and_the_pipeline_waits_it_out(
        tmp_path: Path, redis_cluster: RedisClusterServers, api_factory: Any) -> None:
    """maxmemory reached on the master holding the deployment's slot (the others have room):
    submits get 503 queue_full, the running task finishes, the coordinator waits to place the
    task accepted last, no service exits, and all goes on once that master has room again."""
    with running_stack(tmp_path, redis_cluster.url) as stack:
        api = api_factory(stack.edge_url)
        running = api.submit({"prompt": "before", "metadata": {
            "mock": {"tokens_per_s": 20, "content_tokens": 30}}})
        wait_for(lambda: api.get(running)["status"] == "running", 30, "the task to run")
        owner = redis_cluster.owner_of(Keys(stack.prefix).tasks_stream)
        [coordinator] = stack.of("coordinator")
        coordinator.kill(signal.SIGSTOP)  # so the last task accepted is placed once full
        try:
            queued = api.submit({"prompt": "accepted last"})
            redis_cluster.cli(owner, "CONFIG", "SET", "maxmemory", "1")
        finally:
            coordinator.kill(signal.SIGCONT)
        try:
            refused = api.http.post("/api/tasks", json={"prompt": "full"})
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "queue_full"
            health = api.http.get("/api/health").json()
            assert health["redis_memory"]["state"] == "full", health
            wait_for(lambda: stack.logged("coordinator", "redis_oom"), 30, "coordinator wait")
            assert api.wait_terminal(running)["status"] == "succeeded"
            assert api.get(queued)["status"] == "queued"
            assert all(s.alive for s in stack.services), stack.logs()
        finally:
            redis_cluster.cli(owner, "CONFIG", "SET", "maxmemory", "0")
        task_id = api.submit({"prompt": "room again"})
        for t in (queued, task_id):
            assert api.wait_terminal(t)["status"] == "succeeded"
        assert all(s.alive for s in stack.services), stack.logs()

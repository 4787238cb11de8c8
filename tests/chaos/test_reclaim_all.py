"""Issue 10: a dead processor's batches are all taken over in one pass.

Reclaiming took one batch per RECLAIM_INTERVAL_S (11 batches in 93 s). A processor holding 50
batches is killed: the survivor takes all of them once their lease has run out, in one scan,
so they all finish within the lease plus a few seconds, whatever their number."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from harness.processes import running_stack
from harness.waiting import wait_for
from tests.chaos.conftest import CHAOS_ENV, LEASE_MS, slow, task_hash

BATCHES = 50


def test_kill_9_of_a_processor_holding_50_batches(
        tmp_path: Path, redis_url: str, api_factory: Any) -> None:
    # The governor's first window is as wide as the processor: all 50 answers stream at once.
    env = {**CHAOS_ENV, "BATCH_SIZE": "1", "PROCESSOR_CONCURRENCY": "64",
           "RECLAIM_INTERVAL_S": "1", "GOVERNOR_INITIAL_WINDOW": "64"}
    with running_stack(tmp_path, redis_url, processors=1, env=env) as stack:
        api = api_factory(stack.edge_url)
        [victim] = stack.of("processor")
        ids = [api.submit(slow(tokens_per_s=10, content_tokens=40)) for _ in range(BATCHES)]
        wait_for(lambda: all(task_hash(stack, t).get("status") == "running" for t in ids), 30,
                 f"the one processor to run all {BATCHES} tasks")
        victim.kill(signal.SIGKILL)  # about 4 s before any of its answers would be done
        survivor = stack.start("processor")
        killed_at = time.monotonic()
        deadline = killed_at + LEASE_MS / 1000 + 10
        for task_id in ids:  # the lease, one scan, the answer again (4.4 s), and margin
            left = max(0.1, deadline - time.monotonic())
            assert api.wait_terminal(task_id, left)["status"] == "succeeded"
        print(f"reclaim: {BATCHES} batches of a killed processor finished "
              f"{time.monotonic() - killed_at:.1f}s after the kill (lease {LEASE_MS} ms)")
        assert survivor.alive
        assert survivor.log.read_text().count("reclaimed_batch") == BATCHES

"""Chaos: kill -9 the processor, the coordinator and the edge (which runs the batches) while an
OpenAI batch runs. The output file must hold every line exactly once, each with its answer."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import httpx
import openai
import orjson

from harness.processes import Stack, running_stack
from harness.waiting import wait_for
from tests.chaos.conftest import CHAOS_ENV, RECOVERY_LIMIT_S
from tests.integration.batch_kit import line, mock_text

LINES = 60
KEY = "sk-chaos-batch"


def counts(client: openai.OpenAI, batch_id: str) -> tuple[str, int]:
    batch = client.batches.retrieve(batch_id)
    assert batch.request_counts is not None
    return batch.status, batch.request_counts.completed


def replace(stack: Stack, module: str) -> None:
    [victim] = stack.of(module)
    victim.kill(signal.SIGKILL)
    stack.start(module)


def test_kill_9_every_service_during_a_batch_keeps_every_line_exactly_once(
        tmp_path: Path, redis_url: str) -> None:
    env = {**CHAOS_ENV, "EDGE_API_KEYS": f"{KEY}:alpha", "BATCH_API": "1",
           "BATCH_TICK_S": "0.05",
           "BATCH_LINES_IN_FLIGHT": "8", "BATCH_RUNNER_LEASE_MS": "1000",
           "PROCESSOR_CONCURRENCY": "8"}
    tag = uuid.uuid4().hex[:8]
    prompts = {f"c{n}": f"chaos batch {tag} {n}" for n in range(LINES)}
    data = b"\n".join(line(cid, p, tokens=8, tokens_per_s=40) for cid, p in prompts.items())
    with running_stack(tmp_path, redis_url, env=env) as stack:
        client = openai.OpenAI(base_url=f"{stack.edge_url}/v1", api_key=KEY, max_retries=5)
        file = client.files.create(file=("in.jsonl", data), purpose="batch")
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        started = time.monotonic()
        for at, module in ((8, "processor"), (20, "coordinator"), (32, "edge")):
            wait_for(lambda at=at: counts(client, batch.id)[1] >= at, RECOVERY_LIMIT_S * 2,
                     f"{at} lines done")
            replace(stack, module)
            if module == "edge":
                wait_for(lambda: httpx.get(f"{stack.edge_url}/api/health").status_code == 200,
                         20, "the new edge")
        wait_for(lambda: counts(client, batch.id)[0] == "completed", RECOVERY_LIMIT_S * 4,
                 "the batch to complete")
        done = client.batches.retrieve(batch.id)
        print(f"chaos batch: {LINES} lines with 3 kills in {time.monotonic() - started:.1f} s")
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (LINES, 0)
        assert done.error_file_id is None
        out = [orjson.loads(ln) for ln in
               client.files.content(done.output_file_id or "").text.splitlines()]
        ids = [o["custom_id"] for o in out]
        assert sorted(ids) == sorted(prompts), "every line exactly once"
        for o in out:
            text = o["response"]["body"]["choices"][0]["message"]["content"]
            assert text == mock_text(prompts[o["custom_id"]], 8), o["custom_id"]
        client.close()

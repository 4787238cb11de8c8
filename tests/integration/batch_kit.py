"""The Batch API's test rig: the real edge on a local port (its batch runner included), the
real coordinator and processor loops in process, one Redis prefix and one store (each backend),
the real mock provider; and the official ``openai`` SDK, unchanged, as the client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import orjson

from harness.processes import CLIENT_TLS
from harness.waiting import until
from services.mockai.text import content_tokens, digest_prompt
from tests.integration.edge_client import EdgeUnderTest, running_edge
from tests.integration.kit import Core, wake_blocked

KEY_A, KEY_B = "sk-batch-alpha-1", "sk-batch-beta-2"
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class BatchRig:
    edge: EdgeUnderTest
    client: openai.AsyncOpenAI
    other: openai.AsyncOpenAI  # a key of another tenant
    core: Core

    async def upload(self, lines: list[bytes] | bytes,
                     client: openai.AsyncOpenAI | None = None) -> str:
        data = lines if isinstance(lines, bytes) else b"\n".join(lines) + b"\n"
        f = await (client or self.client).files.create(file=("requests.jsonl", data),
                                                       purpose="batch")
        return f.id

    async def run(self, lines: list[bytes] | bytes, client: openai.AsyncOpenAI | None = None,
                  **create: Any) -> Any:
        """A batch of ``lines``, of the tenant of ``client`` (the first key's by default)."""
        file_id = await self.upload(lines, client)
        batch = await (client or self.client).batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
            **create)
        return batch

    async def wait(self, batch_id: str, statuses: tuple[str, ...] = TERMINAL,
                   within_s: float = 60, client: openai.AsyncOpenAI | None = None) -> Any:
        async def reached() -> Any:  # the SDK's own way: retrieve until done
            batch = await (client or self.client).batches.retrieve(batch_id)
            return batch if batch.status in statuses else None
        return await until(reached, within_s, f"batch {batch_id} to be one of {statuses}",
                           interval=0.05)

    async def jsonl(self, file_id: str | None,
                    client: openai.AsyncOpenAI | None = None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        content = await (client or self.client).files.content(file_id)
        return [orjson.loads(line) for line in content.text.splitlines() if line.strip()]


def line(custom_id: str, prompt: str, tokens: int = 5, url: str = "/v1/chat/completions",
         **mock: Any) -> bytes:
    body = {"model": "mock-r1", "messages": [{"role": "user", "content": prompt}],
            "metadata": {"mock": {"content_tokens": tokens, "reasoning_tokens": 0, **mock}}}
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def mock_text(prompt: str, tokens: int = 5) -> str:
    """What the mock provider answers to this prompt: its text is a function of the prompt."""
    seed = digest_prompt([{"role": "user", "content": prompt}]).seed
    return "".join(content_tokens(seed, tokens))


@contextlib.asynccontextmanager
async def batch_rig(core: Core, tmp: Path, concurrency: int = 8, batch_size: int = 4,
                    **env: str) -> AsyncIterator[BatchRig]:
    """The edge (with ``env``), a coordinator flushing batches of up to ``batch_size`` tasks
    and a processor of ``concurrency`` slots, on ``core``'s Redis and store."""
    edge_env = {"REDIS_PREFIX": core.keys.prefix, "STORE_URL": core.store.url,
                "EDGE_API_KEYS": f"{KEY_A}:alpha,{KEY_B}:beta", "BATCH_TICK_S": "0.02",
                "BATCH_API": "1",
                **env}
    async with running_edge(core.redis_url, tmp, **edge_env) as edge:
        coordinator = core.coordinator(BATCH_SIZE=str(batch_size), BATCH_TIMEOUT_MS="20")
        processor = core.processor(PROCESSOR_CONCURRENCY=str(concurrency))
        base = str(edge.client.make_url("/v1"))
        client, other = (openai.AsyncOpenAI(
            base_url=base, api_key=key, max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(verify=CLIENT_TLS))
            for key in (KEY_A, KEY_B))
        try:
            async with asyncio.TaskGroup() as tg:
                loops = [tg.create_task(coordinator.run()), tg.create_task(processor.run())]
                try:
                    yield BatchRig(edge, client, other, core)
                finally:
                    coordinator.stop()
                    processor.stop()
                    while not all(loop.done() for loop in loops):
                        await wake_blocked(core)
                        await asyncio.wait(loops, timeout=0.05)
        finally:
            await client.close()
            await other.close()


@contextlib.asynccontextmanager
async def runner_paused(rig: BatchRig) -> AsyncIterator[None]:
    """Another replica holds the batch runner's lease meanwhile, so the runner does nothing:
    what a test does in between happens before any line of its batches is queued."""
    lock = rig.core.keys.batch_runner_lock
    await rig.core.redis.set(lock, "another-edge", px=60_000)
    try:
        yield
    finally:
        await rig.core.redis.delete(lock)

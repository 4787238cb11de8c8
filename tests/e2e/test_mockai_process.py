"""The mock provider as a process (``python -m services.mockai``): a bad setting stops it with
status 2 and one line on stderr; it serves, and SIGTERM stops it with status 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from harness.processes import ROOT, free_port
from harness.waiting import until

BODY = {"model": "mock-r1", "messages": [{"role": "user", "content": "hi"}],
        "stream": True}
pytestmark = pytest.mark.first_store_only  # no store in it


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


def test_main_exits_2_on_bad_env() -> None:
    env = {**os.environ, "MOCKAI_PORT": "x"}
    proc = subprocess.run(
        [sys.executable, "-m", "services.mockai"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "mockai: MOCKAI_PORT: expected an integer, got 'x'"


async def test_main_serves(client: httpx.AsyncClient) -> None:
    port = free_port()
    env = {**os.environ, "MOCKAI_PORT": str(port), "MOCKAI_TTFT_MS": "0"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.mockai",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async def up_or_gone() -> bool:  # a refused connection is "not yet"
            if proc.returncode is not None:
                return True
            return (await client.get(f"{base}/health")).status_code == 200
        await until(up_or_gone, 15, "the mock's /health", interval=0.05)
        assert proc.returncode is None, "mock exited early"
        r = await client.post(f"{base}/v1/chat/completions", json=BODY)
        assert r.text.rstrip().endswith("data: [DONE]")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0

"""A provider that holds a stream open with `: keep-alive` comments (DeepSeek under load) is
alive, not stalled: comments reset the idle timer, but not the call's overall timeout. Our
provider client against the mock provider over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from services.mockai.app import create_app
from services.mockai.settings import MockSettings
from services.processor import provider
from services.processor.assembler import Delta, ProviderError
from shared.config import Env, Provider


@pytest.fixture
async def mock_url() -> AsyncIterator[str]:
    server = TestServer(create_app(MockSettings(ttft_ms=0, tokens_per_s=0)))
    await server.start_server()
    yield str(server.make_url("/v1")).rstrip("/")
    await server.close()


async def call(url: str, *, idle_s: float, total_s: float, **mock: Any) -> provider.Completion:
    env = Env({"AI_BASE_URL": url, "AI_MODEL": "mock-r1"})
    settings = replace(Provider.from_env(env), ai_timeout_s=total_s,
                       ai_idle_timeout_s=idle_s, forward_metadata=True)
    got: list[Delta] = []

    async def on_deltas(deltas: list[Delta], _last: bool) -> None:
        got.extend(deltas)

    async with provider.make_client(settings, 4) as client:
        payload = {"model": "mock-r1", "messages": [{"role": "user", "content": "hi"}],
                   "metadata": {"mock": mock}}
        return await provider.complete(client, settings, payload, on_deltas)


async def test_keep_alive_comments_reset_the_idle_timer(mock_url: str) -> None:
    done = await call(mock_url, idle_s=0.6, total_s=30, keepalive_s=1.0)
    assert done.result.content and done.result.finish_reason == "stop"


async def test_silence_as_long_hits_the_idle_timer(mock_url: str) -> None:
    with pytest.raises(ProviderError) as err:
        await call(mock_url, idle_s=0.6, total_s=30, ttft_ms=1500)
    assert err.value.code == "idle_timeout"


async def test_keep_alive_comments_do_not_extend_the_overall_timeout(mock_url: str) -> None:
    with pytest.raises(ProviderError) as err:
        await call(mock_url, idle_s=0.6, total_s=1.0, keepalive_s=5)
    assert err.value.code == "timeout"

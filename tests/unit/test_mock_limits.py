"""The mock provider's limit modes: refusals past a concurrency, request or token limit, with
and without Retry-After, and OpenAI's x-ratelimit-* headers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer

from harness.processes import CLIENT_TLS
from harness.waiting import until
from services.mockai.app import create_app
from services.mockai.limits import Limiter, LimitSettings, format_duration
from services.mockai.settings import ConfigError, MockSettings


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(("seconds", "text"), [
    (0.02, "20ms"), (0.0004, "1ms"), (1, "1s"), (1.5, "1.5s"), (360, "6m0s"),
    (3723.5, "1h2m3.5s"), (59.9996, "1m0s"), (-3, "1ms")])
def test_durations_are_go_style(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_concurrency_limit_refuses_past_n_in_flight_and_frees_on_release() -> None:
    lim = Limiter(LimitSettings(max_concurrency=2))
    assert [lim.admit(1).limit for _ in range(3)] == [None, None, "concurrency"]
    lim.release()
    assert lim.admit(1).limit is None
    assert lim.admit(1).headers == {"Retry-After": "1"}


def test_request_window_counts_and_resets() -> None:
    clock = Clock()
    lim = Limiter(LimitSettings(rpm=2, window_s=10, headers=True), clock)
    first = lim.admit(5)
    assert first.limit is None
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-reset-requests"] == "10s"
    lim.release()
    clock.t += 4
    second = lim.admit(5)
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.headers["x-ratelimit-reset-requests"] == "6s"
    lim.release()
    refused = lim.admit(5)
    assert refused.limit == "requests" and refused.headers["Retry-After"] == "6"
    clock.t += 6
    assert lim.admit(5).limit is None  # a new window


def test_token_window_counts_tokens_not_requests() -> None:
    lim = Limiter(LimitSettings(tpm=100, window_s=60, headers=True, retry_after=False),
                  Clock())
    assert lim.admit(60).headers["x-ratelimit-remaining-tokens"] == "40"
    lim.release()
    refused = lim.admit(60)
    assert refused.limit == "tokens" and "Retry-After" not in refused.headers
    assert lim.admit(40).limit is None


def test_limits_from_env() -> None:
    s = MockSettings.from_env({"MOCKAI_MAX_CONCURRENCY": "8", "MOCKAI_RPM": "30",
                               "MOCKAI_TPM": "9000", "MOCKAI_RATE_WINDOW_S": "2",
                               "MOCKAI_RETRY_AFTER": "false", "MOCKAI_RATELIMIT_HEADERS": "1",
                               "MOCKAI_LIMIT_STATUS": "503"})
    assert s.limits == LimitSettings(max_concurrency=8, rpm=30, tpm=9000, window_s=2,
                                     retry_after=False, headers=True, status=503)
    assert not MockSettings.from_env({}).limits.active
    with pytest.raises(ConfigError, match="MOCKAI_LIMIT_STATUS"):
        MockSettings.from_env({"MOCKAI_LIMIT_STATUS": "500"})
    with pytest.raises(ConfigError, match="MOCKAI_MAX_CONCURRENCY"):
        MockSettings.from_env({"MOCKAI_MAX_CONCURRENCY": "-1"})


@pytest.fixture
async def slow_mock() -> AsyncIterator[str]:
    """Answers that last ~0.3 s, at most 2 in flight, refusals with Retry-After."""
    settings = MockSettings(ttft_ms=300, tokens_per_s=0,
                            limits=LimitSettings(max_concurrency=2))
    server = TestServer(create_app(settings))
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def test_over_http_the_third_concurrent_call_is_refused(slow_mock: str) -> None:
    req: dict[str, Any] = {"model": "mock-r1", "stream": True,
                           "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=10, verify=CLIENT_TLS) as c:
        first = [asyncio.create_task(c.post(f"{slow_mock}/v1/chat/completions", json=req))
                 for _ in range(2)]

        async def both_in_flight() -> bool:
            recs = (await c.get(f"{slow_mock}/mock/requests")).json()["requests"]
            return sum(r["outcome"] == "in_progress" for r in recs) == 2

        await until(both_in_flight, 5, "both calls to be in flight at the mock")
        third = await c.post(f"{slow_mock}/v1/chat/completions", json=req)
        assert third.status_code == 429 and third.headers["retry-after"] == "1"
        assert third.json()["error"]["code"] == "rate_limit_exceeded"
        assert [r.status_code for r in await asyncio.gather(*first)] == [200, 200]
        again = await c.post(f"{slow_mock}/v1/chat/completions", json=req)
        assert again.status_code == 200  # the slots came back when the answers ended
        recs = (await c.get(f"{slow_mock}/mock/requests")).json()["requests"]
        assert [r["limit"] for r in recs].count("concurrency") == 1

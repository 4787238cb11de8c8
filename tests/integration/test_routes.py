"""Several providers per model, in process: two real mock providers over HTTP, PROVIDERS_FILE
routing the model to both, the real coordinator and processors in burst mode on a real Redis
and store. A provider that fails every call is left for the next (and, once its breaker opens,
left alone but for a probe); a provider that is full spills its work over to the next."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp.test_utils import TestServer

from harness.processes import free_port
from harness.providers import two_providers_file
from harness.waiting import until
from services.mockai.app import create_app
from services.mockai.limits import LimitSettings
from services.mockai.settings import MockSettings
from services.processor.settings import ProcessorSettings
from services.processor.worker import Processor, make_http
from shared import metrics, tasks
from shared.config import Env
from shared.governor import Admitted, estimate_tokens, read_providers
from shared.timeutil import now_ms
from tests.integration import kit
from tests.integration.edge_client import running_edge
from tests.integration.kit import Core, request, stopped
from tests.integration.test_metrics_labels import scrape, total

pytestmark = pytest.mark.usefixtures("core")


async def _mock(**settings: Any) -> TestServer:
    server = TestServer(create_app(MockSettings(**{"ttft_ms": 0, "tokens_per_s": 0,
                                                   **settings})))
    await server.start_server()
    return server


@pytest.fixture
async def second_mock() -> AsyncIterator[TestServer]:
    server = await _mock()
    yield server
    await server.close()


def processor(core: Core, path: Path, name: str = "p1", **extra: str) -> Processor:
    env = {k: v for k, v in core.env(PROCESSOR_NAME=name, PROVIDERS_FILE=str(path),
                                     **{"BREAKER_FAILURES": "3", "BREAKER_COOLDOWN_S": "0.2",
                                        **extra})._env.items()
           if k not in ("AI_BASE_URL", "AI_MODEL")}
    settings = ProcessorSettings.from_env(Env(env))
    http = make_http(settings)
    core._http.append(http)
    return Processor(settings, core.redis, core.store, http)


async def outage(url: str, status: int) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(url.removesuffix("/v1") + "/mock/outage", json={"status": status})
        assert r.status_code == 200, r.text


async def calls(url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        r = await http.get(url.removesuffix("/v1") + "/mock/requests")
    return list(r.json()["requests"])


async def views(core: Core, ids: list[str]) -> list[dict[str, Any]]:
    out = []
    for t in ids:
        h = await core.steps.task_hash(t)
        out.append(orjson.loads(h["view"]) if h.get("view") else tasks.view_from_redis(h))
    return out


async def test_a_provider_answering_503_is_left_for_the_next(
        core: Core, second_mock: TestServer, tmp_path: Path) -> None:
    a, b = core.mock_url, str(second_mock.make_url("/v1"))
    await outage(a, 503)
    path = two_providers_file(tmp_path, a, b)
    ids = [await core.submit() for _ in range(60)]
    await core.burst(processor(core, path, GOVERNOR_INITIAL_WINDOW="4"))
    done = await views(core, ids)
    assert [v["status"] for v in done] == ["succeeded"] * 60
    assert {v["result"]["provider"] for v in done} == {"b"}
    assert {v["result"]["model"] for v in done} == {"mock-r1"}
    # A handful of calls, not one per task: the breaker opened after 3 in a row. The calls on
    # their way then fail too: at most the window of 4, and those admitted past the breaker's
    # check while the 3rd failure was being noted (at most another window's worth).
    failed = await calls(a)
    assert all(c["status"] == 503 for c in failed) and 3 <= len(failed) <= 3 + 2 * 4, len(failed)
    assert len(await calls(b)) == 60
    # The tasks that met the outage say so, call by call.
    met = [v for v in done if len(v["tries"]) > 1]
    assert len(met) == len(failed)
    for v in met:
        first, last = v["tries"]
        assert (first["provider"], first["status"], first["error"]["status"]) == (
            "a", "failed", 503)
        assert (last["provider"], last["status"], last["error"]) == ("b", "succeeded", None)
        assert first["processor"] == last["processor"] == "p1"
        assert v["attempts"] == 2
    # The row says the same, once Redis has forgotten the task.
    row = await core.store.get_task(met[0]["id"])
    assert row is not None
    stored = tasks.view_from_row(row)
    assert stored["result"]["provider"] == "b" and stored["tries"] == met[0]["tries"]
    breaker = await core.redis.hgetall(core.keys.breaker("a"))
    assert breaker["state"] == "open" and "503" in breaker["error"]


async def test_the_breaker_opens_probes_and_closes_when_the_provider_heals(
        core: Core, second_mock: TestServer, tmp_path: Path) -> None:
    a, b = core.mock_url, str(second_mock.make_url("/v1"))
    await outage(a, 500)
    path = two_providers_file(tmp_path, a, b)
    first = [await core.submit() for _ in range(12)]
    await core.burst(processor(core, path))
    assert (await core.redis.hgetall(core.keys.breaker("a")))["state"] == "open"
    before = len(await calls(a))
    # Still down when its cool-down ends: one probe, refused, and a longer cool-down.
    breaker = await cooled_down(core, "a")
    more = [await core.submit() for _ in range(6)]
    await core.burst(processor(core, path, "p2"))
    assert len(await calls(a)) == before + 1  # the probe alone
    again = await core.redis.hgetall(core.keys.breaker("a"))
    assert again["state"] == "open" and int(again["cooldown"]) > int(breaker["cooldown"])
    # Healed: the next probe succeeds, the breaker closes and work goes back to the first route.
    await outage(a, 0)
    await cooled_down(core, "a")
    last = [await core.submit() for _ in range(6)]
    await core.burst(processor(core, path, "p3"))
    closed = await core.redis.hgetall(core.keys.breaker("a"))
    assert closed["state"] == "closed" and closed["failures"] == "0"
    # While the probe was out the others went on to b; from now on a takes them all.
    after = [await core.submit() for _ in range(6)]
    await core.burst(processor(core, path, "p4"))
    done = await views(core, first + more + last + after)
    assert all(v["status"] == "succeeded" for v in done)
    assert "a" in {v["result"]["provider"] for v in done[-12:-6]}
    assert {v["result"]["provider"] for v in done[-6:]} == {"a"}


async def cooled_down(core: Core, name: str) -> dict[str, str]:
    """The breaker of ``name`` once its cool-down is over (its next call may be the probe)."""
    async def over() -> dict[str, str] | None:
        breaker: dict[str, str] = await core.redis.hgetall(core.keys.breaker(name))
        return breaker if now_ms() >= int(breaker["open_until"]) else None
    return await until(over, 30, f"the cool-down of {name}'s breaker to end")


async def test_work_spills_over_to_the_second_provider_when_the_first_is_full(
        core: Core, tmp_path: Path) -> None:
    slow = {"ttft_ms": 30, "tokens_per_s": 400,
            "limits": LimitSettings(max_concurrency=4)}  # a 5th call at once gets a 429
    one, two = await _mock(**slow), await _mock(**slow)
    try:
        a, b = str(one.make_url("/v1")), str(two.make_url("/v1"))
        path = two_providers_file(tmp_path, a, b, max_concurrency=4)
        ids = [await core.submit() for _ in range(80)]
        await core.burst(processor(core, path, PROCESSOR_CONCURRENCY="32"),
                         processor(core, path, "p2", PROCESSOR_CONCURRENCY="32"))
        done = await views(core, ids)
        assert [v["status"] for v in done] == ["succeeded"] * 80
        by = {"a": 0, "b": 0}
        for v in done:
            by[v["result"]["provider"]] += 1
        assert by["a"] >= 20 and by["b"] >= 20, by  # both took a real share
        for url in (a, b):
            assert [c for c in await calls(url) if c["status"] == 429] == []
    finally:
        await one.close()
        await two.close()


async def test_health_and_status_name_the_failing_provider(
        core: Core, second_mock: TestServer, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: every call is refused
    path = two_providers_file(tmp_path, f"http://127.0.0.1:{port}/v1",
                              str(second_mock.make_url("/v1")))
    ids = [await core.submit() for _ in range(6)]
    await core.burst(processor(core, path, GOVERNOR_INITIAL_WINDOW="2"))
    assert {v["result"]["provider"] for v in await views(core, ids)} == {"b"}
    async with running_edge(core.redis_url, tmp_path, REDIS_PREFIX=core.keys.prefix,
                            STORE_URL=core.store.url, PROVIDERS_FILE=str(path)) as edge:
        r = await edge.client.get("/api/health")
        health = await r.json()
        assert r.status == 200 and health["status"] == "degraded", health
        assert health["failing_providers"] == ["a"]
        a = health["providers"]["a"]
        assert a["status"] in ("open", "failing"), a  # open after 3 in a row
        assert a["last_error"] == f"connect to 127.0.0.1:{port} refused"
        assert health["providers"]["b"]["status"] == "ok"
        # The dashboard's provider tab: each provider's breaker, and its governor by name.
        overview = await (await edge.client.get("/api/admin/overview")).json()
        breakers = overview["provider"]["breakers"]
        assert breakers["a"] == a and breakers["b"]["status"] == "ok", breakers
        # /api/ai-status: the providers as a live processor sees them, from its heartbeat.
        live = processor(core, path, "p9")
        running = asyncio.create_task(live.run())
        try:
            async def seen() -> list[dict[str, Any]] | None:
                got = await (await edge.client.get("/api/ai-status")).json()
                told = [p for v in got["routes"] for p in v["processors"].values()]
                return got["routes"] if told and all(p["breaker"] for p in told) else None
            routes = await until(seen, 10, "the processor's report")
            by = {v["name"]: v for v in routes}
            assert set(by) == {"a", "b"}
            assert by["a"]["processors"]["p9"]["breaker"]["state"] == (
                "open" if a["status"] == "open" else "closed")
            assert by["a"]["processors"]["p9"]["api_key_configured"] is False
        finally:
            live.stop()
            await stopped(core, running)


async def test_a_provider_that_declares_its_limits_starts_the_window_there(
        core: Core, second_mock: TestServer, tmp_path: Path) -> None:
    """x-ratelimit-limit-tokens: 1,000,000 a minute, in calls of ~1,030 tokens: the window
    starts at ~970 once the first call is taken, not at the slow start's 2 (which 30 calls
    would grow to 32 at most)."""
    declaring = await _mock(limits=LimitSettings(tpm=1_000_000, headers=True))
    try:
        path = two_providers_file(tmp_path, str(declaring.make_url("/v1")),
                                  str(second_mock.make_url("/v1")))
        ids = [await core.submit() for _ in range(30)]
        await core.burst(processor(core, path, GOVERNOR_INITIAL_WINDOW="2"))
        assert all(v["status"] == "succeeded" for v in await views(core, ids))
    finally:
        await declaring.close()
    [a] = [p for p in await read_providers(core.redis, core.keys, now_ms())
           if p.get("provider") == "a"]
    assert a["window"] == 1_000_000 // estimate_tokens(request()), a


async def test_in_file_mode_a_task_says_it_waits_for_its_providers(
        core: Core, second_mock: TestServer, tmp_path: Path) -> None:
    """The edge holds no provider key, so it finds each provider's governor as the processors
    registered it: a task whose every route is full waits for provider_capacity, and for a
    processor as soon as one has room."""
    path = two_providers_file(tmp_path, core.mock_url, str(second_mock.make_url("/v1")),
                              max_concurrency=1)
    holder = processor(core, path)
    stopped = asyncio.Event()
    stopped.set()
    await holder.governor.run(stopped, stopped)  # registers each provider, as at its start
    steps, slots = holder.governor.steps, []
    for target in holder.router.governed():  # a call in flight on each: both are full
        slot = f"{now_ms()}:elsewhere:{target.name}"
        admitted = await steps.admit(target.route.governor, "tsk_elsewhere", slot, now_ms(),
                                     60_000, 1, target.limits)
        assert isinstance(admitted, Admitted)
        slots.append((target, slot))
    task_id = await core.submit()
    await core.coordinator().run_burst()
    async with running_edge(core.redis_url, tmp_path, REDIS_PREFIX=core.keys.prefix,
                            STORE_URL=core.store.url, PROVIDERS_FILE=str(path),
                            EDGE_API_KEYS="key-of-acme:acme") as edge:
        async def waiting() -> dict[str, Any]:
            r = await edge.client.get(f"/api/tasks/{task_id}",
                                      headers={"Authorization": "Bearer key-of-acme"})
            got: dict[str, Any] = await r.json()
            assert got.get("status") == "batched", got
            return dict(got["waiting_for"])

        assert await waiting() == {"reason": "provider_capacity", "until": None}
        # b's call ends: a processor can take the task to b now.
        target, slot = slots[1]
        await steps.settle(target.route.governor, now_ms(), [{"slot": slot, "outcome": "ok"}],
                           target.limits)
        assert await waiting() == {"reason": "processor", "until": None}


async def test_each_providers_calls_count_under_its_own_label(
        core: Core, second_mock: TestServer, tmp_path: Path) -> None:
    """Issue 26's metrics per provider: calls, tokens and TTFT under `provider` and the route's
    `model` (the name the provider was asked for), the breaker's state per provider. The
    names are this test's own (the registry is the process's, shared by every test)."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"a-{tag}", f"b-{tag}"
    path = tmp_path / "two.toml"
    path.write_text(f"""
[[provider]]
name = "{a}"
base_url = "{core.mock_url}"

[[provider]]
name = "{b}"
base_url = "{second_mock.make_url('/v1')}"

[[model]]
name = "mock-r1"
routes = [{{ provider = "{a}", model = "r1-at-a" }}, {{ provider = "{b}", model = "r1-at-b" }}]

[[model]]
name = "mock-b"
routes = [{{ provider = "{b}", model = "b-only" }}]
""")
    quiet = {"content_tokens": 4, "reasoning_tokens": 0}
    for _ in range(2):
        await kit.submit(core.steps, body=kit.request(quiet))
    for _ in range(3):
        await kit.submit(core.steps, body={**kit.request(quiet), "model": "mock-b"})
    long_cooldown = {"BREAKER_COOLDOWN_S": "60"}  # a's breaker stays open until the scrape
    await core.burst(processor(core, path, **long_cooldown))
    # a fails everything now: its breaker opens, its tasks go on to b.
    await outage(core.mock_url, 503)
    for _ in range(4):
        await kit.submit(core.steps, body=kit.request(quiet))
    await core.burst(processor(core, path, "p2", **long_cooldown))

    s = scrape()
    at_a = {"provider": a, "model": "r1-at-a"}
    assert total(s, "sluice_provider_requests_total", status="200", **at_a) == 2
    assert total(s, "sluice_provider_requests_total", status="503", **at_a) >= 3
    assert total(s, "sluice_tokens_total", kind="completion", **at_a) == 8
    assert total(s, "sluice_time_to_first_token_seconds_count", **at_a) == 2
    at_b = {"provider": b, "model": "b-only"}
    assert total(s, "sluice_provider_requests_total", status="200", **at_b) == 3
    assert total(s, "sluice_tokens_total", kind="completion", **at_b) == 12
    assert total(s, "sluice_time_to_first_token_seconds_count", **at_b) == 3
    fell_back = {"provider": b, "model": "r1-at-b"}
    assert total(s, "sluice_provider_requests_total", status="200", **fell_back) == 4
    assert total(s, "sluice_tokens_total", kind="completion", **fell_back) == 16
    assert total(s, "sluice_time_to_first_token_seconds_count", **fell_back) == 4
    assert total(s, "sluice_provider_requests_total", provider=b, status="503") == 0
    # Each provider's breaker under its own name: a's open, b's closed.
    assert s[("sluice_provider_breaker_state", frozenset({("provider", a)}))] == 2
    assert s[("sluice_provider_breaker_state", frozenset({("provider", b)}))] == 0
    # Each provider's governor: its window, nothing in flight once the work is done.
    for name in (a, b):
        assert s[("sluice_governor_window", frozenset({("provider", name)}))] >= 1
        assert s[("sluice_governor_calls_in_flight", frozenset({("provider", name)}))] == 0
    for family in (metrics.ttft, metrics.tokens, metrics.provider_requests, metrics.itl,
                   metrics.provider_rate_limited, metrics.provider_in_flight):
        assert {"provider", "model"} <= set(family._labelnames), family


async def test_a_breaker_that_opens_takes_its_providers_room_at_once_and_the_clock_gives_it_back(
        core: Core, second_mock: TestServer, tmp_path: Path) -> None:
    """The governor keeps the room it worked out: a breaker's change alone (no room seen anew)
    must still take its provider's room away, and the end of its cool-down give it back."""
    path = two_providers_file(tmp_path, core.mock_url, str(second_mock.make_url("/v1")))
    governor = processor(core, path, BREAKER_FAILURES="1", BREAKER_COOLDOWN_S="0.3").governor
    await governor.breakers.refresh()
    for gid in governor.governed:
        governor._seen(gid, await governor.steps.peek(gid, now_ms(), governor.limits[gid]))
    both = governor.room()
    assert both > 0
    await governor.breakers.failed("a", "boom")  # the real step: a's breaker opens
    assert governor.breakers.allows("a", now_ms()) == "no"
    one = governor.room()
    assert 0 < one < both  # b's room alone, at once
    await until(lambda: governor.room() == both, 10, "a's room back when its cool-down ends")

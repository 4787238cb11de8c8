"""Helpers of the fast layer: submit a task through the real step, read a task's events, take a
snapshot of every key under a test's prefix, and build the real services in process."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from redis.asyncio.client import PubSub

from harness.processes import CLIENT_TLS
from services.coordinator.batcher import Coordinator
from services.coordinator.settings import CoordinatorSettings
from services.processor.routing import Router
from services.processor.settings import ProcessorSettings
from services.processor.worker import Processor, make_http
from shared import groups, tasks
from shared.config import Env
from shared.keys import Keys
from shared.redis_conn import RedisClient
from shared.steps import Begun, Created, Steps, TenantLimits
from shared.store import Store
from shared.timeutil import now_ms

NO_LIMITS = TenantLimits(rate_per_window=0, window_ms=60_000, max_active=0)
QUEUED_EVENT = orjson.dumps({"status": tasks.QUEUED}).decode()
BURST_TIMEOUT_S = 20  # a hang guard, far above what any burst here takes
QUIET = {"reasoning_tokens": 0}  # mock answers of content only: simpler to compare


def request(mock: dict[str, Any] | None = None, prompt: str = "Say something") -> dict[str, Any]:
    body: dict[str, Any] = {"model": "mock-r1",
                            "messages": [{"role": "user", "content": prompt}]}
    if mock is not None:
        body["metadata"] = {"mock": mock}
    return body


async def submit(steps: Steps, *, tenant: str = "acme", body: dict[str, Any] | None = None,
                 limits: TenantLimits = NO_LIMITS, now: int | None = None, priority: int = 0,
                 cost: int = 1) -> str:
    task_id = tasks.new_task_id()
    result = await steps.submit(
        task_id=task_id, tenant=tenant, request_json=orjson.dumps(body or request()),
        model="mock-r1", now=now or now_ms(), idem_key=None, body_hash="", idempotency_ttl_s=60,
        first_event=QUEUED_EVENT, task_ttl_s=600, limits=limits, priority=priority, cost=cost)
    assert isinstance(result, Created) and result.id == task_id, result
    return task_id


async def complete(steps: Steps, task_id: str, token: str, status: str = tasks.SUCCEEDED,
                   result: dict[str, Any] | None = None, retention_s: int = 60) -> object:
    """complete.lua with a small result (or error), as the runner calls it."""
    result = result if result is not None else {"content": "Hi"}
    error = {"code": "boom", "message": "it broke"} if status == tasks.FAILED else None
    return await steps.complete(
        task_id=task_id, token=token, status=status,
        result_json=orjson.dumps(result) if status == tasks.SUCCEEDED else "",
        error_json=orjson.dumps(error) if error else "", now=now_ms(), retention_s=retention_s,
        view_json=orjson.dumps({"id": task_id, "status": status}))


async def waiting_room(redis: RedisClient, keys: Keys) -> list[str]:
    """Every task id in the waiting room, tenant by tenant."""
    ids: list[str] = []
    for tenant in await redis.zrange(keys.waiting_tenants, 0, -1):
        ids += await redis.zrange(keys.waiting_line(tenant), 0, -1)
    return ids


async def read_new(redis: RedisClient, stream: str, group: str, consumer: str,
                   count: int = 100) -> list[tuple[str, dict[str, str]]]:
    """Entries delivered to ``consumer`` (the group is created when missing)."""
    await groups.ensure_group(redis, stream, group)
    reply = await redis.xreadgroup(group, consumer, {stream: ">"}, count=count)
    return [(entry_id, fields) for _stream, entries in reply for entry_id, fields in entries]


async def begun(steps: Steps, task_id: str, token: str = "tok-a", ttl_ms: int = 30_000) -> Begun:
    result = await steps.begin(task_id=task_id, token=token, ttl_ms=ttl_ms, now=now_ms(),
                               processor="p1")
    assert isinstance(result, Begun), result
    return result


async def events(redis: RedisClient, keys: Keys, task_id: str) -> list[tuple[str, Any]]:
    """The task's event stream as (type, decoded data)."""
    return [(f["e"], orjson.loads(f["d"])) for _id, f in await redis.xrange(keys.events(task_id))]


async def contents(redis: RedisClient, keys: Keys) -> dict[str, Any]:
    """Every key under the test's prefix with its whole value: equal snapshots mean nothing
    was written in between."""
    out: dict[str, Any] = {}
    async for key in redis.scan_iter(match=f"{{{keys.prefix}}}:*", count=1000):
        kind = await redis.type(key)
        if kind == "string":
            out[key] = await redis.get(key)
        elif kind == "hash":
            out[key] = await redis.hgetall(key)
        elif kind == "zset":
            out[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            out[key] = await redis.lrange(key, 0, -1)
        elif kind == "stream":
            out[key] = await redis.xrange(key)
        else:
            out[key] = kind
    return out


async def next_message(pubsub: PubSub, within_s: float = 5.0) -> Any:
    """The next published message's data (get_message also answers None for a subscribe
    confirmation it skips)."""
    async with asyncio.timeout(within_s):
        while (message := await pubsub.get_message(timeout=within_s)) is None:
            pass
    return message["data"]


@dataclass
class Core:
    """The real coordinator and processors of one test, on its own prefix and store."""

    redis_url: str
    redis: RedisClient
    keys: Keys
    steps: Steps
    store: Store
    mock_url: str
    _http: list[Router] = field(default_factory=list)

    def env(self, **extra: str) -> Env:
        return Env({
            "REDIS_URL": self.redis_url, "REDIS_PREFIX": self.keys.prefix,
            "STORE_URL": self.store.url, "AI_BASE_URL": self.mock_url, "AI_MODEL": "mock-r1",
            "AI_FORWARD_METADATA": "true",  # the mock's faults ride in metadata.mock
            "BATCH_SIZE": "3", "BATCH_ADAPTIVE": "false", "RETRY_BASE_S": "0.01",
            "HEARTBEAT_S": "0.05", **extra})

    def processor(self, name: str = "p1", **env: str) -> Processor:
        settings = ProcessorSettings.from_env(self.env(PROCESSOR_NAME=name, **env))
        http = make_http(settings)
        self._http.append(http)
        return Processor(settings, self.redis, self.store, http)

    def coordinator(self, **env: str) -> Coordinator:
        return Coordinator(CoordinatorSettings.from_env(self.env(COORDINATOR_NAME="c1", **env)),
                           self.redis)

    async def submit(self, mock: dict[str, Any] | None = None, **kw: Any) -> str:
        return await submit(self.steps, body=request(mock, **kw))

    async def burst(self, *processors: Processor) -> None:
        """The coordinator's burst (every task batched), then the processors' until idle."""
        async with asyncio.timeout(BURST_TIMEOUT_S):
            await self.coordinator().run_burst()
            async with asyncio.TaskGroup() as tg:
                for p in processors or (self.processor(),):
                    tg.create_task(p.run(burst=True))

    async def mock_requests(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(verify=CLIENT_TLS) as http:
            resp = await http.get(self.mock_url.removesuffix("/v1") + "/mock/requests")
        return list(resp.json()["requests"])

    async def close(self) -> None:
        for http in self._http:
            await http.aclose()


async def wake_blocked(core: Core) -> None:
    """End the loops' blocking waits now, as their timeouts (POLL_S, 1 s) would, so a stopped
    loop sees it is stopping: each blocked read is unblocked (CLIENT UNBLOCK ... TIMEOUT),
    and each pub/sub wait gets a message no loop acts on. A graceful stop, without sitting
    out a second of blocking after every test."""
    for client in await core.redis.client_list():
        if client.get("cmd") in ("xread", "xreadgroup") and "b" in client.get("flags", ""):
            await core.redis.client_unblock(client["id"])
    for channel in (core.keys.cancel_channel, core.keys.batch_channel):
        await core.redis.publish(channel, "")


async def stopped(core: Core, *loops: asyncio.Task[Any]) -> None:
    """Wait for loops told to stop (``stop()``) to end, waking their blocking waits meanwhile
    (:func:`wake_blocked`), so each ends in milliseconds, not at its next 1 s timeout."""
    async with asyncio.timeout(BURST_TIMEOUT_S):
        while not all(loop.done() for loop in loops):
            await wake_blocked(core)
            await asyncio.wait(loops, timeout=0.05)
    for loop in loops:
        await loop  # its error, if it failed

async def mid_stream(core: Core, task_id: str) -> None:
    """Block on the task's event stream until a content delta is in it."""
    last = "0-0"
    async with asyncio.timeout(BURST_TIMEOUT_S):
        while True:
            reply = await core.redis.xread({core.keys.events(task_id): last}, block=1000)
            for _stream, entries in reply:
                for entry_id, fields in entries:
                    if fields["e"] == "content":
                        return
                    last = entry_id


def deltas(evs: list[tuple[str, Any]]) -> str:
    return "".join(d["delta"] for kind, d in evs if kind == "content")

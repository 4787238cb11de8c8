"""The provider governor on a processor: every provider call goes through :meth:`Governor.call`.

Admission is one Redis step (admit.lua), so the governor costs one round trip per call on the
hot path; the end of a call (slot freed, tokens corrected, window moved) and what the
provider's headers said go out in coalesced settle steps, many calls per round trip under
load. The slots a processor holds are leases, renewed together every third of their TTL: a
processor that dies frees its slots within the lease time.

The processor claims work only while the governor says the provider has room (:meth:`room`),
and reports that room as its free capacity, so the coordinator's adaptive flush follows it too:
while the provider is saturated, tasks wait in Redis, not in a processor.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from services.processor.assembler import ProviderError, Usage
from shared import logs, metrics
from shared.config import mask_url
from shared.governor import (
    Admitted,
    GovernorSteps,
    Limits,
    RateHeaders,
    Room,
    estimate_tokens,
    key_fingerprint,
    provider_id,
)
from shared.keys import Keys
from shared.redis_conn import WAIT_OUT, RedisClient, wait_event
from shared.timeutil import now_ms

log = logs.get("sluice.governor")

UNLIMITED = 1_000_000  # room() when the governor is off
POLL_SATURATED_S = 0.1  # how often a waiting processor looks for room freed elsewhere
POLL_IDLE_S = 1.0
_OVERLOADED = ("overload", "busy", "capacity", "too many")


class DeadlineExceeded(Exception):
    """The task's deadline passed before the provider had room for it."""


def is_rate_limit(err: ProviderError) -> bool:
    """A refusal that a wait fixes: 429 (but not a quota that is gone: insufficient_quota is
    not retryable), 529, or a 503 that says it is overloaded (Retry-After, or its words)."""
    if err.status == 429:
        return err.retryable
    if err.status == 529:
        return True
    if err.status == 503:
        return err.retry_after is not None or any(w in err.message.lower() for w in _OVERLOADED)
    return False


@dataclass(slots=True)
class Call:
    """One provider call, used as ``async with governor.call(...) as call``: admitted on entry
    (waiting while the provider has no room), settled on exit however it ends. A class, not an
    ``@asynccontextmanager``: that one keeps a suspended generator frame and its manager for
    the whole answer, ~0.5 KB per stream in flight. ``observe`` is handed the response
    headers."""

    governor: Governor | None  # None: the governor is off, nothing to admit or settle
    task_id: str
    request: dict[str, Any]
    deadline_at: int | None
    provider: str = ""
    slot: str = ""
    tokens: int = 0
    usage: Usage | None = None

    async def __aenter__(self) -> Call:
        """Raises DeadlineExceeded when the deadline comes before the provider has room."""
        if self.governor is not None:
            await self.governor._acquire(self)
        return self

    async def __aexit__(self, _type: type[BaseException] | None, exc: BaseException | None,
                        _tb: object) -> None:
        if self.governor is not None:
            await self.governor._settle(self, exc)

    def observe(self, headers: Any) -> None:
        if self.governor is not None:
            self.governor.observe(self.provider, headers)

    def used(self, usage: Usage | None) -> None:
        self.usage = usage


class Governor:
    def __init__(self, redis: RedisClient, keys: Keys, *, name: str, enabled: bool,
                 limits: Limits, lease_ms: int, base_url: str, api_key: str | None,
                 model: str, on_change: Callable[[bool], None],
                 retry_after_cap_s: float = math.inf) -> None:
        self.steps = GovernorSteps(redis, keys, limits)
        self.redis, self.keys, self.name, self.enabled = redis, keys, name, enabled
        self.lease_ms, self.on_change = lease_ms, on_change
        # RETRY_AFTER_CAP_S: a provider asking for a day pauses every processor for this long
        # at most, then the next call asks again.
        self.retry_after_cap_s = retry_after_cap_s
        self._base_url, self._api_key, self._model = base_url, api_key, model
        self._ids: dict[str, str] = {}
        self.default = self.provider_for(model)
        self.held: dict[str, str] = {}  # slot -> provider
        # Slot ids are unique by this process's name and a count: no random bytes per call.
        self._slots = itertools.count()
        self.rooms: dict[str, Room] = {}
        self.waiting = 0  # tasks of this processor waiting for admission
        self._told_open = False  # what on_change said last (room() is 0 until the first look)
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._due = asyncio.Event()
        self._freed = asyncio.Event()

    def provider_for(self, model: str) -> str:
        pid = self._ids.get(model)
        if pid is None:
            pid = self._ids[model] = provider_id(self._base_url, self._api_key, model)
        return pid

    # --- what the processor may claim ----------------------------------------------------------
    def room(self) -> int:
        """Calls the default provider can take now, as last seen, less our own waiting tasks."""
        if not self.enabled:
            return UNLIMITED
        seen = self.rooms.get(self.default)
        if seen is None:
            return 0  # not looked yet: run() looks at once
        return seen.free(now_ms()) - self.waiting

    def _seen(self, provider: str, room: Room) -> None:
        self.rooms[provider] = room
        if provider == self.default:
            metrics.set_governor(room.limit, room.in_flight)
        # Against what was last told, not the room a moment ago: a pause that ends opens the
        # room by the clock alone, and that opening must still be told.
        is_open = self.room() > 0
        if is_open != self._told_open:
            self._told_open = is_open
            self.on_change(is_open)

    # --- one call -------------------------------------------------------------------------------
    def call(self, task_id: str, request: dict[str, Any], deadline_at: int | None) -> Call:
        """The call to make under ``async with``: see :class:`Call`."""
        return Call(self if self.enabled else None, task_id, request, deadline_at)

    async def _settle(self, call: Call, exc: BaseException | None) -> None:
        """The end of an admitted call: "ok" when its body finished, "limited" when the
        provider refused it for a wait, "other" for any other error or a cancellation."""
        outcome = "ok" if exc is None else "other"
        retry_after: float | None = None
        if isinstance(exc, ProviderError) and is_rate_limit(exc):
            outcome = "limited"
            if exc.retry_after is not None:
                retry_after = min(exc.retry_after, self.retry_after_cap_s)
        entry = self._release(call, outcome, retry_after)
        if outcome == "limited":
            # Applied before this task asks again: the pause and the smaller window must hold
            # for its own next admission too. Refusals are rare; one round trip each.
            await self._settle_now(call.provider, entry)
        else:
            self._queue(call.provider, entry)

    async def _acquire(self, call: Call) -> None:
        task_id, request, deadline_at = call.task_id, call.request, call.deadline_at
        provider = self.provider_for(str(request.get("model") or self._model))
        tokens = estimate_tokens(request)
        backoff = 0.01
        self.waiting += 1
        admitted = False
        try:
            while True:
                now = now_ms()
                if deadline_at is not None and now >= deadline_at:
                    raise DeadlineExceeded
                slot = f"{now}:{self.name}:{task_id}:{next(self._slots)}"
                reply = await self.steps.admit(provider, task_id, slot, now, self.lease_ms,
                                               tokens)
                if isinstance(reply, Admitted):
                    self.held[slot] = provider
                    self.waiting -= 1  # before _seen, so room() counts this call once
                    admitted = True
                    self._seen(provider, Room(reply.limit, reply.in_flight, 0))
                    call.provider, call.slot, call.tokens = provider, slot, tokens
                    return
                self._seen(provider, Room(reply.limit, max(reply.in_flight, reply.limit),
                                          reply.until))
                if reply.until > now:
                    delay = (reply.until - now) / 1000
                else:
                    delay, backoff = backoff, min(backoff * 2, POLL_SATURATED_S)
                if deadline_at is not None:
                    delay = min(delay, max(0.0, (deadline_at - now) / 1000))
                await self._wait_freed(delay * random.uniform(1.0, 1.2))
        finally:
            if not admitted:
                self.waiting -= 1

    async def _wait_freed(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._freed.wait(), timeout=seconds)

    def _wake(self) -> None:
        freed, self._freed = self._freed, asyncio.Event()
        freed.set()

    def _release(self, call: Call, outcome: str,
                 retry_after: float | None) -> dict[str, Any]:
        self.held.pop(call.slot, None)  # not renewed any more: the lease ends it at worst
        entry: dict[str, Any] = {"slot": call.slot, "outcome": outcome}
        if call.usage is not None:
            entry["tokens"] = call.usage.total_tokens - call.tokens
        if retry_after:
            entry["pause_until"] = now_ms() + math.ceil(retry_after * 1000)
        return entry

    async def _settle_now(self, provider: str, entry: dict[str, Any]) -> None:
        entries = [*self._pending.pop(provider, []), entry]  # what the headers said, first
        try:
            self._seen(provider, await self.steps.settle(provider, now_ms(), entries))
        except WAIT_OUT:
            self._pending.setdefault(provider, []).extend(entries)
            self._due.set()
            raise

    def observe(self, provider: str, headers: Any) -> None:
        """The provider's x-ratelimit-* headers, learned as soon as an answer starts."""
        found = RateHeaders.parse(headers, now_ms())
        if found is not None:
            self._queue(provider, {"h": found.entry()})

    def _queue(self, provider: str, entry: dict[str, Any]) -> None:
        self._pending.setdefault(provider, []).append(entry)
        self._due.set()

    # --- background -----------------------------------------------------------------------------
    async def run(self, stopping: asyncio.Event, drained: asyncio.Event) -> None:
        if not self.enabled:
            return
        await self._register()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._settle_loop(drained))
            tg.create_task(self._settle_once_drained(drained))
            tg.create_task(self._renew_loop(drained))
            tg.create_task(self._poll_loop(stopping))

    async def _register(self) -> None:
        label = {"base_url": mask_url(self._base_url), "model": self._model,
                 "key": key_fingerprint(self._api_key)}
        with contextlib.suppress(*WAIT_OUT):
            await self.redis.hset(self.keys.governors, self.default, orjson.dumps(label))

    async def _settle_loop(self, drained: asyncio.Event) -> None:
        """Send what ended while the last settle was on its way, in one step per provider."""
        while not (drained.is_set() and not self._pending):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), timeout=0.5)
            self._due.clear()
            batch, self._pending = self._pending, {}
            for provider, entries in batch.items():
                try:
                    room = await self.steps.settle(provider, now_ms(), entries)
                except WAIT_OUT as exc:
                    # The slots expire with their leases (no longer renewed); what the headers
                    # said is lost, and the next answers say it again.
                    log.warning("settle_failed", cause=wait_event(exc), error=type(exc).__name__,
                                calls=len(entries))
                    continue
                self._seen(provider, room)
            if batch:
                self._wake()

    async def _settle_once_drained(self, drained: asyncio.Event) -> None:
        """Wake the settle loop for its last pass as soon as the processor has drained, so a
        stopping processor does not sit out the loop's half-second tick."""
        await drained.wait()
        self._due.set()

    async def _renew_loop(self, drained: asyncio.Event) -> None:
        interval = self.lease_ms / 3000
        while not drained.is_set():
            held = dict(self.held)
            if held:
                expiry = now_ms() + self.lease_ms
                try:
                    async with self.redis.pipeline(transaction=False) as p:
                        for slot, provider in held.items():
                            # XX: a slot that expired (we were cut off too long) stays freed.
                            p.zadd(self.keys.governor_slots(provider), {slot: expiry}, xx=True)
                        await p.execute()
                except WAIT_OUT as exc:
                    log.warning("slot_renewal_failed", cause=wait_event(exc),
                                error=type(exc).__name__, slots=len(held))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), timeout=interval)

    async def _poll_loop(self, stopping: asyncio.Event) -> None:
        """Keep the room we claim by fresh: often while the provider is full or paused (room
        freed by other processors shows up here), seldom otherwise."""
        while not stopping.is_set():
            try:
                self._seen(self.default, await self.steps.peek(self.default, now_ms()))
            except WAIT_OUT as exc:
                log.warning("governor_peek_failed", cause=wait_event(exc),
                            error=type(exc).__name__)
            pause = POLL_SATURATED_S if self.room() <= 0 else POLL_IDLE_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=pause)

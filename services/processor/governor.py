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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from services.processor.assembler import ProviderError, Usage
from services.processor.breakers import Breakers
from services.processor.routing import Target, breaks
from shared import logs, metrics
from shared.config import mask_url
from shared.governor import (
    Admitted,
    BreakerPolicy,
    GovernorSteps,
    Limits,
    RateHeaders,
    Room,
    estimate_tokens,
    key_fingerprint,
    provider_id,
)
from shared.keys import Keys
from shared.providers import DEFAULT
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


def next_look(backoff_s: float, rooms: Iterable[Room], now: int) -> float:
    """Seconds until the poll looks again: its backoff, but no later than the soonest pause or
    spent quota ends (1 ms past it). The room opens by the clock then, and the processor must
    hear of it then: after its backoff, up to a second later, every processor left the
    provider idle meanwhile (after a Retry-After: 1, up to twice as long as asked)."""
    ends = [r.blocked_until for r in rooms if r.blocked_until > now]
    return min(backoff_s, (min(ends) - now + 1) / 1000) if ends else backoff_s


@dataclass(slots=True)
class Call:
    """One provider call, used as ``async with governor.call(...) as call``: admitted on entry
    on the first of its ``targets`` (a model's routes, in order) whose provider has room and
    whose breaker lets it (waiting while none does), settled on exit however it ends. A class,
    not an ``@asynccontextmanager``: that one keeps a suspended generator frame and its manager
    for the whole answer, ~0.5 KB per stream in flight. ``observe`` is handed the response
    headers; ``accepted`` is called at the answer's first token."""

    governor: Governor
    task_id: str
    request: dict[str, Any]
    deadline_at: int | None
    targets: Sequence[Target] = ()
    target: Target | None = None  # the route admitted
    provider: str = ""  # its governor's id
    slot: str = ""
    tokens: int = 0
    admitted_n: int = 0  # the provider's calls in flight when this one was admitted (its own in)
    usage: Usage | None = None
    accept_sent: bool = False
    probe: bool = False  # the call is its provider's breaker probe

    async def __aenter__(self) -> Call:
        """Raises DeadlineExceeded when the deadline comes before a provider has room."""
        await self.governor._acquire(self)
        return self

    async def __aexit__(self, _type: type[BaseException] | None, exc: BaseException | None,
                        _tb: object) -> None:
        await self.governor._settle(self, exc)

    def observe(self, headers: Any) -> None:
        if self.governor.enabled:
            self.governor.observe(self.provider, headers)

    def accepted(self) -> None:
        """The answer's first token: the provider took the call (see settle.lua)."""
        if not self.accept_sent:
            self.accept_sent = True
            self.governor._accepted(self)

    def used(self, usage: Usage | None) -> None:
        self.usage = usage


class Governor:
    def __init__(self, redis: RedisClient, keys: Keys, *, name: str, enabled: bool,
                 limits: Limits, lease_ms: int, base_url: str, api_key: str | None,
                 model: str, on_change: Callable[[bool], None],
                 retry_after_cap_s: float = math.inf, governed: Sequence[Target] = (),
                 breakers: Breakers | None = None) -> None:
        self.steps = GovernorSteps(redis, keys, limits)
        self.redis, self.keys, self.name, self.enabled = redis, keys, name, enabled
        self.lease_ms, self.on_change = lease_ms, on_change
        # RETRY_AFTER_CAP_S: a provider asking for a day pauses every processor for this long
        # at most, then the next call asks again.
        self.retry_after_cap_s = retry_after_cap_s
        self._base_url, self._api_key, self._model = base_url, api_key, model
        self.breakers = breakers or Breakers(self.steps, BreakerPolicy(0, 1, 1, 1), ())
        # The governors whose room this processor claims by (id -> target): each provider's;
        # without targets, the one provider for the default model, as before.
        self.governed: dict[str, Target | None] = (
            {t.route.governor: t for t in governed} if governed
            else {provider_id(base_url, api_key, model): None})
        self.default = next(iter(self.governed))
        self.limits: dict[str, Limits] = {
            gid: (t.limits if t is not None else limits) for gid, t in self.governed.items()}
        self.held: dict[str, str] = {}  # slot -> provider
        # Slot ids are unique by this process's name and a count: no random bytes per call.
        self._slots = itertools.count()
        self.rooms: dict[str, Room] = {}
        self.waiting = 0  # tasks of this processor waiting for admission
        self._told_open = False  # what on_change said last (room() is 0 until the first look)
        self._last_room = 0  # room() as the last look saw it
        self._room_kept: tuple[int, int, float, int] | None = None  # see _room_now
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._due = asyncio.Event()
        self._freed = asyncio.Event()
        # The calls waiting for admission, by the routes they wait for, in order of arrival.
        self._lines: dict[tuple[str, ...], list[tuple[Call, asyncio.Event]]] = {}
        self._notes: set[asyncio.Future[None]] = set()  # breaker notes on their way

    # --- what the processor may claim ----------------------------------------------------------
    def room(self) -> int:
        """Calls the governed providers can take now, as last seen (a provider whose breaker
        is open has none), less our own waiting tasks. Asked about ten times per task: the
        providers' sum is kept while it holds (see :meth:`_room_now`)."""
        if not self.enabled:
            return UNLIMITED
        now, kept = now_ms(), self._room_kept
        if (kept is None or kept[0] != self.breakers.version or not kept[1] <= now < kept[2]):
            kept = self._room_kept = self._room_now(now)
        return kept[3] - self.waiting

    def _room_now(self, now: int) -> tuple[int, int, float, int]:
        """(breakers' version, from, until, free): the governed providers' room at ``now``,
        which holds until a room or a breaker is seen anew (``_seen`` forgets it, a breaker's
        change moves the version) or the clock reaches the first pause or cool-down that ends
        after ``now`` (an open breaker lets a probe through then, a paused room opens)."""
        free, until = 0, float(math.inf)
        breakers = self.breakers
        for gid, target in self.governed.items():
            seen = self.rooms.get(gid)
            if seen is None:
                continue  # not looked yet: run() looks at once
            if target is not None and breakers.allows(target.name, now) == "no":
                until = min(until, breakers.until(target.name))
                continue
            if seen.blocked_until > now:
                until = min(until, seen.blocked_until)
            free += seen.free(now)
        return breakers.version, now, until, free

    def _seen(self, provider: str, room: Room) -> None:
        self.rooms[provider] = room
        self._room_kept = None
        target = self.governed.get(provider, None)
        if provider in self.governed:
            metrics.set_governor(target.name if target is not None else DEFAULT, room.limit,
                                 room.in_flight)
        # Against what was last told, not the room a moment ago: a pause that ends opens the
        # room by the clock alone, and that opening must still be told. A room that grows
        # while open is told too: the processor may have stopped claiming by its own count
        # (tasks claimed, not yet admitted) while the room stayed open here, and then waited
        # for one of its calls to end (a whole long call) before it claimed the room grown.
        free = self.room()
        is_open, grew = free > 0, free > self._last_room
        self._last_room = free
        if is_open != self._told_open or (is_open and grew):
            self._told_open = is_open
            self.on_change(is_open)

    # --- one call -------------------------------------------------------------------------------
    def call(self, task_id: str, request: dict[str, Any], deadline_at: int | None,
             targets: Sequence[Target] = ()) -> Call:
        """The call to make under ``async with``: see :class:`Call`."""
        return Call(self, task_id, request, deadline_at, targets)

    async def _settle(self, call: Call, exc: BaseException | None) -> None:
        """The end of an admitted call: "ok" when its body finished, "limited" when the
        provider refused it for a wait, "other" for any other error or a cancellation. Its
        provider's breaker hears of a success and of a failure it counts."""
        target = call.target
        if target is not None:
            if exc is None and not call.accept_sent:
                await self.breakers.succeeded(target.name)
            elif isinstance(exc, ProviderError) and breaks(exc):
                await self.breakers.failed(target.name, exc.message)
            elif call.probe and exc is not None and not call.accept_sent:
                # Stopped (cancelled) before its answer said anything: not a verdict.
                await self.breakers.give_back_probe(target.name)
        if not self.enabled or not call.slot:
            return
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

    def _accepted(self, call: Call) -> None:
        if self.enabled and call.slot:
            # Its estimated tokens: a declared tokens-per-minute limit starts the window at
            # that many calls of this size (settle.lua).
            # And the calls in flight it was admitted with: its first token proves the provider
            # holds that many at once (slow start doubles from there: settle.lua).
            self._queue(call.provider, {"accept": call.slot, "te": call.tokens,
                                        "n": call.admitted_n})
        if call.target is not None:
            seen = self.breakers.seen.get(call.target.name)
            if seen is not None and (seen.state != "closed" or seen.failures):
                # A probe's first token closes the breaker at once, not once a long answer is
                # whole: the providers' tasks stop waiting now.
                task = asyncio.ensure_future(self.breakers.succeeded(call.target.name))
                self._notes.add(task)
                task.add_done_callback(self._notes.discard)

    async def _acquire(self, call: Call) -> None:
        """Admit ``call``, waiting while no target has room. The tasks of this processor that
        wait for the same routes form a line: each asks once as it joins (so its task says
        what it waits for), then only the head of the line asks again, by the clock or when a
        slot of ours frees; the next in line asks as soon as the head is admitted or gone. 200
        tasks waiting for a window of 1 cost one poll, not 200 (each of them 10 round trips a
        second, before)."""
        request, deadline_at = call.request, call.deadline_at
        targets: Sequence[Target | None] = call.targets or (None,)
        tokens = estimate_tokens(request)
        backoff = 0.01
        key = tuple(t.route.governor if t is not None else "" for t in targets)
        line = self._lines.setdefault(key, [])
        turn = asyncio.Event()  # set when this call becomes the head of its line
        line.append((call, turn))
        self.waiting += 1
        admitted, asked = False, False
        try:
            while True:
                now = now_ms()
                if deadline_at is not None and now >= deadline_at:
                    raise DeadlineExceeded
                if asked and line[0][0] is not call:
                    delay = POLL_IDLE_S  # its deadline is still seen
                    if deadline_at is not None:
                        delay = min(delay, max(0.0, (deadline_at - now) / 1000))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(turn.wait(), timeout=delay)
                    continue
                asked = True
                soonest = math.inf  # when to look again (epoch ms; 0: when a slot frees)
                for target in targets:
                    until = await self._try(call, target, tokens, now)
                    if until is None:
                        admitted = True  # _try counted it out of the waiting
                        return
                    soonest = min(soonest, until)
                if soonest > now:
                    delay = (soonest - now) / 1000
                else:
                    delay, backoff = backoff, min(backoff * 2, POLL_SATURATED_S)
                delay = min(delay, POLL_IDLE_S)  # a breaker's change elsewhere is seen here
                if deadline_at is not None:
                    delay = min(delay, max(0.0, (deadline_at - now) / 1000))
                await self._wait_freed(delay * random.uniform(1.0, 1.2))
        finally:
            if not admitted:
                self.waiting -= 1
            head = line[0][0] is call
            line[:] = [entry for entry in line if entry[0] is not call]
            if not line:
                del self._lines[key]
            elif head:
                line[0][1].set()  # the next in line asks now

    async def _try(self, call: Call, target: Target | None, tokens: int, now: int
                   ) -> float | None:
        """Admit ``call`` on ``target``: None when it was, else when to look again (epoch ms;
        0: when a slot frees)."""
        probe = False
        if target is not None:
            verdict = self.breakers.allows(target.name, now)
            if verdict == "no":
                return self.breakers.until(target.name)
            if verdict == "probe":
                granted, probe = await self.breakers.take_probe(target.name)
                if not granted:
                    return self.breakers.until(target.name)
        if not self.enabled:
            call.target, call.probe = target, probe
            self.waiting -= 1
            return None
        provider = target.route.governor if target is not None else self.default
        limits = target.limits if target is not None else self.limits[self.default]
        slot = f"{now}:{self.name}:{call.task_id}:{next(self._slots)}"
        reply = await self.steps.admit(provider, call.task_id, slot, now, self.lease_ms,
                                       tokens, limits)
        if isinstance(reply, Admitted):
            self.held[slot] = provider
            call.target, call.probe = target, probe
            call.provider, call.slot, call.tokens = provider, slot, tokens
            call.admitted_n = reply.in_flight
            self.waiting -= 1  # before _seen, so room() counts this call once
            self._seen(provider, Room(reply.limit, reply.in_flight, 0))
            return None
        if probe:
            await self.breakers.give_back_probe(target.name)  # type: ignore[union-attr]
        self._seen(provider, Room(reply.limit, max(reply.in_flight, reply.limit), reply.until))
        return reply.until

    async def _wait_freed(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._freed.wait(), timeout=seconds)

    def _wake(self) -> None:
        freed, self._freed = self._freed, asyncio.Event()
        freed.set()

    def _release(self, call: Call, outcome: str,
                 retry_after: float | None) -> dict[str, Any]:
        self.held.pop(call.slot, None)  # not renewed any more: the lease ends it at worst
        entry: dict[str, Any] = {"slot": call.slot, "outcome": outcome, "n": call.admitted_n}
        if call.accept_sent:
            entry["accepted"] = 1  # it grew the window at its first token, not again here
        if call.usage is not None:
            entry["tokens"] = call.usage.total_tokens - call.tokens
        if retry_after:
            entry["pause_until"] = now_ms() + math.ceil(retry_after * 1000)
        return entry

    async def _settle_now(self, provider: str, entry: dict[str, Any]) -> None:
        entries = [*self._pending.pop(provider, []), entry]  # what the headers said, first
        try:
            self._seen(provider, await self.steps.settle(provider, now_ms(), entries,
                                                         self._limits_of(provider)))
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

    def _limits_of(self, provider: str) -> Limits:
        return self.limits.get(provider) or self.limits[self.default]

    async def _register(self) -> None:
        for gid, target in self.governed.items():
            if target is None:
                label = {"base_url": mask_url(self._base_url), "model": self._model,
                         "key": key_fingerprint(self._api_key)}
            else:
                label = {"provider": target.name, "base_url": target.spec.shown_url,
                         "model": target.route.model, "key": key_fingerprint(target.spec.key())}
            with contextlib.suppress(*WAIT_OUT):
                await self.redis.hset(self.keys.governors, gid, orjson.dumps(label))

    async def _settle_loop(self, drained: asyncio.Event) -> None:
        """Send what ended while the last settle was on its way, in one step per provider."""
        while not (drained.is_set() and not self._pending):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), timeout=0.5)
            self._due.clear()
            batch, self._pending = self._pending, {}
            for provider, entries in batch.items():
                try:
                    room = await self.steps.settle(provider, now_ms(), entries,
                                                   self._limits_of(provider))
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
        """Keep the room we claim by fresh: often while the providers are full or paused (room
        freed by other processors shows up here), seldom otherwise; and the breakers."""
        pause, last = POLL_SATURATED_S, None
        while not stopping.is_set():
            try:
                await self.breakers.refresh()
                for gid in self.governed:
                    self._seen(gid, await self.steps.peek(gid, now_ms(), self.limits[gid]))
            except WAIT_OUT as exc:
                log.warning("governor_peek_failed", cause=wait_event(exc),
                            error=type(exc).__name__)
            # Saturated, every tenth of a second while the room moves; while it stands still
            # (long calls: nothing ends for minutes), twice as long each time, up to a second.
            seen = (dict(self.rooms), dict(self.breakers.seen))
            if self.room() > 0:
                pause = POLL_IDLE_S
            elif seen != last:
                pause = POLL_SATURATED_S
            else:
                pause = min(pause * 2, POLL_IDLE_S)
            last = seen
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(),
                                       timeout=next_look(pause, self.rooms.values(), now_ms()))

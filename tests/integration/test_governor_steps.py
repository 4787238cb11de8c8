"""The governor's Lua steps (admit, settle, peek, expire) against a real redis-server: the
rules of admission, the AIMD window, pauses, header pacing and leases, each in milliseconds."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shared import redis_conn
from shared.governor import RATE_WINDOW_MS, Admitted, GovernorSteps, Limits, Room, Wait
from shared.keys import Keys
from shared.redis_conn import RedisClient

LEASE = 30_000
T0 = 1_800_000_000_000 - 1_800_000_000_000 % RATE_WINDOW_MS  # the start of a rate window
P = "prov"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[RedisClient]:
    client = redis_conn.connect(redis_url)
    yield client
    await client.aclose()


def steps_for(redis: RedisClient, **limits: Any) -> GovernorSteps:
    return GovernorSteps(redis, Keys("g" + uuid.uuid4().hex[:10]), Limits(**limits))


async def admit(steps: GovernorSteps, now: int, name: str = "", tokens: int = 10,
                lease: int = LEASE) -> tuple[Admitted | Wait, str]:
    slot = f"{now}:proc:{name or uuid.uuid4().hex[:6]}"
    return await steps.admit(P, "tsk_x", slot, now, lease, tokens), slot


async def fill(steps: GovernorSteps, now: int) -> list[str]:
    """Admit until the governor says wait; the slots admitted."""
    slots = []
    while True:
        reply, slot = await admit(steps, now)
        if isinstance(reply, Wait):
            assert reply.reason == "capacity" and reply.until == 0
            return slots
        slots.append(slot)


async def test_admits_up_to_the_initial_window_then_waits_for_capacity(
        redis: RedisClient) -> None:
    steps = steps_for(redis, initial_window=3)
    assert len(await fill(steps, T0)) == 3
    reply, _ = await admit(steps, T0)
    assert isinstance(reply, Wait) and (reply.limit, reply.in_flight) == (3, 3)
    waiting = await redis.hgetall(steps.keys.task("tsk_x"))
    assert waiting["waiting_for"] == "capacity"


async def test_successes_grow_the_window_in_slow_start_then_a_429_halves_it_once(
        redis: RedisClient) -> None:
    steps = steps_for(redis, initial_window=4)
    slots = await fill(steps, T0)
    room = await steps.settle(P, T0 + 10, [{"slot": slots[0], "outcome": "ok"}])
    assert room == Room(5, 3, 0)  # full window, success: +1
    slots = slots[1:] + await fill(steps, T0 + 20)
    assert len(slots) == 5
    # Two refusals of the same overshoot: the window halves once, not twice.
    room = await steps.settle(P, T0 + 30, [{"slot": slots[0], "outcome": "limited"},
                                           {"slot": slots[1], "outcome": "limited"}])
    assert room.limit == 2 and room.in_flight == 3
    # Out of slow start: +1/window per success while full.
    later = T0 + 40
    reply, _ = await admit(steps, later)
    assert isinstance(reply, Wait)  # 3 in flight, window 2.5
    window = float(await redis.hget(steps.keys.governor(P), "window") or 0)
    assert window == 2.5
    await steps.settle(P, later, [{"slot": slots[2], "outcome": "ok"}])
    assert float(await redis.hget(steps.keys.governor(P), "window") or 0) == pytest.approx(2.9)


async def test_the_window_never_falls_below_one(redis: RedisClient) -> None:
    steps = steps_for(redis, initial_window=1)
    now = T0
    for _ in range(4):
        reply, slot = await admit(steps, now)
        assert isinstance(reply, Admitted)
        now += 10
        room = await steps.settle(P, now, [{"slot": slot, "outcome": "limited"}])
        assert room.limit == 1
        now = max(now, room.blocked_until) + 1


async def test_retry_after_pauses_the_provider_for_every_caller(redis: RedisClient) -> None:
    steps = steps_for(redis, initial_window=4)
    reply, slot = await admit(steps, T0)
    room = await steps.settle(P, T0 + 5, [{"slot": slot, "outcome": "limited",
                                           "pause_until": T0 + 2005}])
    assert room.blocked_until == T0 + 2005 and room.free(T0 + 2000) == 0
    reply, _ = await admit(steps, T0 + 2000)
    assert isinstance(reply, Wait) and (reply.reason, reply.until) == ("paused", T0 + 2005)
    assert (await steps.peek(P, T0 + 2000)).blocked_until == T0 + 2005
    reply, _ = await admit(steps, T0 + 2005)
    assert isinstance(reply, Admitted)


async def test_repeated_refusals_without_retry_after_back_off(redis: RedisClient) -> None:
    steps = steps_for(redis, initial_window=2, max_backoff_ms=600)
    now, pauses = T0, []
    for _ in range(5):
        reply, slot = await admit(steps, now)
        assert isinstance(reply, Admitted)
        room = await steps.settle(P, now, [{"slot": slot, "outcome": "limited"}])
        pauses.append(room.blocked_until - now if room.blocked_until else 0)
        now = max(now, room.blocked_until) + 1
    assert pauses == [0, 250, 500, 600, 600]
    reply, slot = await admit(steps, now)
    await steps.settle(P, now, [{"slot": slot, "outcome": "ok"}])
    reply, slot = await admit(steps, now + 1)
    room = await steps.settle(P, now + 1, [{"slot": slot, "outcome": "limited"}])
    assert room.blocked_until == 0  # a success ended the streak


async def test_a_dead_holders_slots_come_back_when_their_lease_ends(redis: RedisClient) -> None:
    steps = steps_for(redis, initial_window=2)
    for _ in range(2):
        reply, _ = await admit(steps, T0, lease=1000)
        assert isinstance(reply, Admitted)
    reply, _ = await admit(steps, T0 + 999)
    assert isinstance(reply, Wait)
    assert (await steps.peek(P, T0 + 1000)).in_flight == 0
    reply, _ = await admit(steps, T0 + 1000)
    assert isinstance(reply, Admitted)


async def test_operator_max_concurrency_caps_the_learned_window(redis: RedisClient) -> None:
    steps = steps_for(redis, initial_window=10, max_concurrency=3)
    slots = await fill(steps, T0)
    assert len(slots) == 3
    room = await steps.settle(P, T0, [{"slot": s, "outcome": "ok"} for s in slots])
    assert room.limit == 3


async def test_rpm_and_tpm_hold_per_window(redis: RedisClient) -> None:
    steps = steps_for(redis, initial_window=100, rpm=3)
    for i in range(3):
        reply, _ = await admit(steps, T0 + i)
        assert isinstance(reply, Admitted)
    reply, _ = await admit(steps, T0 + 10)
    assert isinstance(reply, Wait) and reply.reason == "rpm"
    assert reply.until == T0 + RATE_WINDOW_MS  # all 3 in this window: the next one
    # Sliding: the old window's 3 count in proportion to their overlap.
    reply, _ = await admit(steps, T0 + RATE_WINDOW_MS + 1000)
    assert isinstance(reply, Wait) and reply.reason == "rpm"
    assert T0 + RATE_WINDOW_MS < reply.until <= T0 + RATE_WINDOW_MS + RATE_WINDOW_MS // 3 + 1
    reply, _ = await admit(steps, reply.until)
    assert isinstance(reply, Admitted)

    steps = steps_for(redis, initial_window=100, tpm=1000)
    reply, slot = await admit(steps, T0, tokens=900)
    assert isinstance(reply, Admitted)
    reply, _ = await admit(steps, T0 + 1, tokens=200)
    assert isinstance(reply, Wait) and reply.reason == "tpm"
    # The real usage was 300, not 900: corrected, there is room again.
    await steps.settle(P, T0 + 2, [{"slot": slot, "outcome": "ok", "tokens": -600}])
    reply, _ = await admit(steps, T0 + 3, tokens=200)
    assert isinstance(reply, Admitted)


async def test_rate_limit_headers_pace_calls_before_a_429(redis: RedisClient) -> None:
    steps = steps_for(redis, initial_window=10)
    await admit(steps, T0)
    # The answer says: 1 request left, resets in 2 s; limit 3.
    await steps.settle(P, T0 + 5, [{"h": {"rr": 1, "rs": T0 + 2005, "rl": 3}}])
    reply, _ = await admit(steps, T0 + 6)
    assert isinstance(reply, Admitted)  # the last one
    reply, _ = await admit(steps, T0 + 7)
    assert isinstance(reply, Wait) and (reply.reason, reply.until) == ("requests", T0 + 2005)
    assert (await steps.peek(P, T0 + 7)).blocked_until == T0 + 2005
    # An older answer reporting more left does not undo what was taken since.
    await steps.settle(P, T0 + 8, [{"h": {"rr": 2, "rs": T0 + 2005}}])
    reply, _ = await admit(steps, T0 + 9)
    assert isinstance(reply, Wait) and reply.reason == "requests"
    # After the reset, the announced limit is back: 3 calls, then wait for word.
    admitted = [await admit(steps, T0 + 2005 + i) for i in range(4)]
    assert [isinstance(r, Admitted) for r, _ in admitted] == [True, True, True, False]
    last = admitted[3][0]
    assert isinstance(last, Wait) and (last.reason, last.until) == ("requests", 0)


async def test_the_first_answer_after_a_reset_does_not_undo_the_calls_admitted_since(
        redis: RedisClient) -> None:
    # The e2e pacing test's flake: after the reset the announced 3 calls go at once; the
    # first one's answer says 2 left (it was counted before the other two), which must not
    # let a fourth call go before the other answers (or the next reset) say so.
    steps = steps_for(redis, initial_window=10)
    await steps.settle(P, T0, [{"h": {"rr": 0, "rs": T0 + 1000, "rl": 3}}])
    admitted = [await admit(steps, T0 + 1000 + i) for i in range(3)]
    assert all(isinstance(r, Admitted) for r, _ in admitted)
    await steps.settle(P, T0 + 1010, [{"h": {"rr": 2, "rs": T0 + 3000, "rl": 3}}])
    reply, _ = await admit(steps, T0 + 1011)
    assert isinstance(reply, Wait) and (reply.reason, reply.until) == ("requests", T0 + 3000)
    # An answer from before the reset says nothing about the new window.
    await steps.settle(P, T0 + 1012, [{"h": {"rr": 1, "rs": T0 + 1000}}])
    reply, _ = await admit(steps, T0 + 1013)
    assert isinstance(reply, Wait) and reply.reason == "requests"
    # At the next reset the announced limit is back.
    reply, _ = await admit(steps, T0 + 3000)
    assert isinstance(reply, Admitted)


async def test_token_headers_wait_for_their_reset(redis: RedisClient) -> None:
    steps = steps_for(redis, initial_window=10)
    await steps.settle(P, T0, [{"h": {"tr": 100, "ts": T0 + 500}}])
    reply, _ = await admit(steps, T0 + 1, tokens=150)
    assert isinstance(reply, Wait) and (reply.reason, reply.until) == ("tokens", T0 + 500)
    reply, _ = await admit(steps, T0 + 1, tokens=80)
    assert isinstance(reply, Admitted)


FAR = 999_999 * 3_600_000  # x-ratelimit-reset-requests: 999999h, in ms


async def test_a_far_reset_waits_for_the_cap_then_one_probe_decides(redis: RedisClient) -> None:
    steps = steps_for(redis, initial_window=10, reset_cap_ms=2000)
    await steps.settle(P, T0, [{"h": {"rr": 0, "rs": T0 + FAR, "rl": 100}}])
    reply, _ = await admit(steps, T0 + 1)
    assert isinstance(reply, Wait) and (reply.reason, reply.until) == ("requests", T0 + 2000)
    assert (await steps.peek(P, T0 + 1)).blocked_until == T0 + 2000
    # Past the cap: one call goes, the next waits for its answer (not for the limit of 100).
    probe, slot = await admit(steps, T0 + 2000)
    assert isinstance(probe, Admitted)
    reply, _ = await admit(steps, T0 + 2001)
    assert isinstance(reply, Wait) and (reply.reason, reply.until) == ("requests", 0)
    # Its answer says the same again: the cap again, from now.
    await steps.settle(P, T0 + 2100, [{"h": {"rr": 0, "rs": T0 + FAR}},
                                      {"slot": slot, "outcome": "ok"}])
    reply, _ = await admit(steps, T0 + 2101)
    assert isinstance(reply, Wait) and (reply.reason, reply.until) == ("requests", T0 + 4100)
    # The next probe's answer says 50 left: calls go.
    probe, slot = await admit(steps, T0 + 4100)
    assert isinstance(probe, Admitted)
    await steps.settle(P, T0 + 4200, [{"h": {"rr": 50, "rs": T0 + 5000}},
                                      {"slot": slot, "outcome": "ok"}])
    admitted = [await admit(steps, T0 + 4201) for _ in range(3)]
    assert all(isinstance(r, Admitted) for r, _ in admitted)


async def test_a_probe_answered_without_rate_headers_forgets_the_capped_quota(
        redis: RedisClient) -> None:
    steps = steps_for(redis, initial_window=10, reset_cap_ms=1000)
    await steps.settle(P, T0, [{"h": {"rr": 0, "rs": T0 + FAR, "tr": 0, "ts": T0 + FAR}}])
    probe, slot = await admit(steps, T0 + 1000)
    assert isinstance(probe, Admitted)
    # Refused without a word on the quota: still one probe at a time.
    await steps.settle(P, T0 + 1100, [{"slot": slot, "outcome": "other"}])
    probe, slot = await admit(steps, T0 + 1101)
    assert isinstance(probe, Admitted)
    reply, _ = await admit(steps, T0 + 1102)
    assert isinstance(reply, Wait) and reply.until == 0
    # A success that says nothing about either quota: the provider serves, calls go.
    await steps.settle(P, T0 + 1200, [{"slot": slot, "outcome": "ok"}])
    admitted = [await admit(steps, T0 + 1201) for _ in range(5)]
    assert all(isinstance(r, Admitted) for r, _ in admitted)
    state = await redis.hgetall(steps.keys.governor(P))
    assert not {"req_rem", "req_reset", "tok_rem", "tok_reset"} & set(state)


async def test_a_retry_after_past_the_cap_pauses_for_the_cap(redis: RedisClient) -> None:
    steps = steps_for(redis, reset_cap_ms=3000)
    _, slot = await admit(steps, T0)
    room = await steps.settle(P, T0 + 5, [{"slot": slot, "outcome": "limited",
                                           "pause_until": T0 + 86_400_000}])
    assert room.blocked_until == T0 + 3005
    assert isinstance((await admit(steps, T0 + 3005))[0], Admitted)


async def test_expire_fails_a_waiting_task_but_leaves_a_running_one(redis: RedisClient) -> None:
    steps = steps_for(redis)
    k = steps.keys
    for tid, status in (("tsk_q", "queued"), ("tsk_r", "running")):
        await redis.hset(k.task(tid), mapping={"id": tid, "status": status, "tenant": "t"})
        await redis.zadd(k.deadlines, {tid: T0})
        await redis.zadd(k.tenant_active("t"), {tid: T0})
    err = {"code": "deadline_exceeded", "message": "late"}
    assert await steps.expire("tsk_q", T0, 60, err, {"status": "failed"}) == "expired"
    assert await steps.expire("tsk_r", T0, 60, err, {}) == "running"
    assert await steps.expire("tsk_gone", T0, 60, err, {}) == "gone"
    h = await redis.hgetall(k.task("tsk_q"))
    assert h["status"] == "failed" and "deadline_exceeded" in h["error"]
    assert await redis.hget(k.task("tsk_r"), "status") == "running"
    assert await redis.zcard(k.deadlines) == 0
    assert await redis.zrange(k.tenant_active("t"), 0, -1) == ["tsk_r"]
    assert await redis.zscore(k.dead_letters, "tsk_q") == T0
    events = await redis.xrange(k.events("tsk_q"))
    assert [e["e"] for _id, e in events] == ["error"]


class KeyCounter:
    """Wraps a registered script (redis-py's object, not ours) to record the keys sent."""

    def __init__(self, script: Any) -> None:
        self.script, self.sent = script, -1

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        self.sent = len(keys)
        return await self.script(keys=keys, args=args)


def declared_keys(name: str) -> int:
    text = (Path(__file__).parents[2] / "shared" / "lua" / f"{name}.lua").read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("--"))
    return max(int(n) for n in re.findall(r"KEYS\[(\d+)\]", header))


async def test_each_script_header_declares_the_keys_its_method_sends(
        redis: RedisClient) -> None:
    steps = steps_for(redis)
    spies = {}
    for attr, name in (("_admit", "admit"), ("_settle", "settle"), ("_peek", "gov_peek"),
                       ("_expire", "expire")):
        spies[name] = KeyCounter(getattr(steps, attr))
        setattr(steps, attr, spies[name])
    await steps.admit(P, "tsk_x", f"{T0}:p", T0, LEASE, 1)
    await steps.settle(P, T0, [{"slot": f"{T0}:p", "outcome": "ok"}])
    await steps.peek(P, T0)
    await steps.expire("tsk_x", T0, 60, {}, {})
    assert {n: s.sent for n, s in spies.items()} == {n: declared_keys(n) for n in spies}


async def test_after_a_refusal_the_window_climbs_back_fast_then_probes_slowly(
        redis: RedisClient) -> None:
    steps = steps_for(redis, initial_window=10)
    state = steps.keys.governor(P)
    slots = await fill(steps, T0)
    await steps.settle(P, T0 + 1, [{"slot": slots[0], "outcome": "limited"}])
    assert float(await redis.hget(state, "window") or 0) == 5  # halved, refused at 10
    await steps.settle(P, T0 + 1, [{"slot": s, "outcome": "other"} for s in slots[1:]])

    async def one_success(now: int) -> float:
        slots = await fill(steps, now)
        await steps.settle(P, now, [{"slot": s, "outcome": "ok"} for s in slots[:1]])
        await steps.settle(P, now, [{"slot": s, "outcome": "other"} for s in slots[1:]])
        return float(await redis.hget(state, "window") or 0)

    # Far below the last safe window (9): half the distance per round, spread over a round.
    assert await one_success(T0 + 2) == pytest.approx(5 + 2 / 5)
    await redis.hset(state, "window", 9)
    # At the last safe window: probing beyond it is 50 times slower than additive increase.
    assert await one_success(T0 + 3) == pytest.approx(9 + 1 / (9 * 50))


async def test_the_refusals_of_one_overshoot_tell_what_the_provider_took(
        redis: RedisClient) -> None:
    """16 calls sent at once to a provider that takes 8: the window halves once, and the safe
    window learned is the 8 the provider kept, not the 16 sent."""
    steps = steps_for(redis, initial_window=16)
    slots = await fill(steps, T0)
    assert len(slots) == 16
    for i, slot in enumerate(slots[8:]):
        await steps.settle(P, T0 + 1 + i, [{"slot": slot, "outcome": "limited"}])
    state = await redis.hgetall(steps.keys.governor(P))
    assert float(state["window"]) == 8 and float(state["refused_at"]) == 9


async def test_declared_limits_start_the_window_once_a_call_is_taken(
        redis: RedisClient) -> None:
    """A provider that declares 100 requests a minute need not be ramped up to from 4: its
    first call taken (its first token) starts the window there."""
    steps = steps_for(redis, initial_window=4)
    slots = await fill(steps, T0)
    assert len(slots) == 4
    # The headers alone (a 429 carries them too) move nothing.
    room = await steps.settle(P, T0 + 1, [{"h": {"rl": 100}}])
    assert room.limit == 4
    room = await steps.settle(P, T0 + 2, [{"accept": slots[0], "te": 50}])
    assert room.limit == 100
    assert len(await fill(steps, T0 + 3)) == 96
    # Tokens per minute, divided by the call's estimate, bound it too: the smaller wins.
    steps = steps_for(redis, initial_window=4)
    slots = await fill(steps, T0)
    await steps.settle(P, T0 + 1, [{"h": {"rl": 100, "tl": 40_000}},
                                   {"accept": slots[0], "te": 1000}])
    assert (await steps.peek(P, T0 + 2)).limit == 40
    # The operator's max concurrency still caps it.
    steps = steps_for(redis, initial_window=4, max_concurrency=8)
    slots = await fill(steps, T0)
    room = await steps.settle(P, T0 + 1, [{"h": {"tl": 40_000}}, {"accept": slots[0], "te": 10}])
    assert room.limit == 8


async def test_declared_limits_do_not_undo_what_a_refusal_taught(redis: RedisClient) -> None:
    steps = steps_for(redis, initial_window=4)
    slots = await fill(steps, T0)
    await steps.settle(P, T0 + 1, [{"slot": slots[0], "outcome": "limited"}])
    room = await steps.settle(P, T0 + 2, [{"h": {"rl": 100}}, {"accept": slots[1], "te": 50}])
    assert room.limit == 2


async def test_a_round_of_first_tokens_settled_together_doubles_the_window(
        redis: RedisClient) -> None:
    """Slow start: each call of a full window taken grows it by one, also when their first
    tokens are settled in one step (before, only the first of them counted: the window then
    grew by one per settle step, not per call)."""
    steps = steps_for(redis, initial_window=16)
    slots = await fill(steps, T0)
    room = await steps.settle(P, T0 + 100, [{"accept": s, "te": 10} for s in slots])
    assert room.limit == 32
    # Their ends, settled together later, do not count again.
    room = await steps.settle(P, T0 + 200, [{"slot": s, "outcome": "ok", "accepted": 1}
                                            for s in slots])
    assert room.limit == 32


async def fill_counted(steps: GovernorSteps, now: int) -> list[tuple[str, int]]:
    """As fill, with each slot's calls in flight when it was admitted (its own included)."""
    out = []
    while True:
        reply, slot = await admit(steps, now)
        if isinstance(reply, Wait):
            return out
        out.append((slot, reply.in_flight))


async def test_slow_start_doubles_per_round_of_first_tokens_while_the_calls_go_on(
        redis: RedisClient) -> None:
    """Long calls stay in flight after their first token: a round of them taken proves the
    provider holds that many at once, so the next window is twice that. Before, each first
    token added one call, so the window grew by the round's new calls (16, 32, 48, 64: +16 per
    round, 184 rounds' worth of first tokens to 200, not 4 doublings)."""
    steps = steps_for(redis, initial_window=16)
    first = await fill_counted(steps, T0)
    room = await steps.settle(P, T0 + 100, [{"accept": s, "te": 10, "n": n} for s, n in first])
    assert room.limit == 32
    second = await fill_counted(steps, T0 + 110)
    assert len(second) == 16
    # One call ends before the round's first tokens are settled: the window is not full then,
    # but those calls were admitted into a full one (the processor's claims lag the room).
    await steps.settle(P, T0 + 150, [{"slot": first[0][0], "outcome": "ok", "accepted": 1}])
    room = await steps.settle(P, T0 + 210, [{"accept": s, "te": 10, "n": n} for s, n in second])
    assert room.limit == 64


async def test_a_window_that_is_not_used_does_not_double(redis: RedisClient) -> None:
    """Three calls in flight of a window of 16: their first tokens prove 3, not 16."""
    steps = steps_for(redis, initial_window=16)
    few = []
    for _ in range(3):
        reply, slot = await admit(steps, T0)
        assert isinstance(reply, Admitted)
        few.append((slot, reply.in_flight))
    room = await steps.settle(P, T0 + 100, [{"accept": s, "te": 10, "n": n} for s, n in few])
    assert room.limit == 16


async def simulate(steps: GovernorSteps, limit: int, calls: int, call_ms: int = 500,
                   ttft_ms: int = 100, retry_after_ms: int = 1000) -> dict[str, Any]:
    """A provider that takes ``limit`` calls in flight and refuses the next at once (429 with
    Retry-After), driven through admit and settle as the processors drive them, on a clock of
    10 ms ticks. Returns the refusals (their tick and the calls sent before each), the calls
    taken, and the simulated time."""
    now, sent, taken = T0, 0, 0
    running: list[tuple[int, int, str, int]] = []  # (first token at, ends at, slot, n)
    refusals: list[int] = []  # the calls sent before each refusal
    while sent < calls:
        entries: list[dict[str, Any]] = []
        for first_at, end_at, slot, n in running:
            if first_at == now:
                entries.append({"accept": slot, "te": 10, "n": n})
            if end_at == now:
                entries.append({"slot": slot, "outcome": "ok", "accepted": 1})
        running = [r for r in running if r[1] > now]
        if entries:
            await steps.settle(P, now, entries)
        admitted: list[tuple[str, int]] = []  # sent together, answered after
        while sent + len(admitted) < calls:
            reply, slot = await admit(steps, now)
            if isinstance(reply, Wait):
                break
            admitted.append((slot, reply.in_flight))
        for slot, n in admitted:
            sent += 1
            if len(running) >= limit:
                refusals.append(sent - 1)
                # A refusal is answered at once: a millisecond after it was sent.
                await steps.settle(P, now + 1, [{"slot": slot, "outcome": "limited",
                                                 "pause_until": now + 1 + retry_after_ms}])
            else:
                taken += 1
                running.append((now + ttft_ms, now + call_ms, slot, n))
        now += 10
    return {"refusals": refusals, "taken": taken, "ms": now - T0}


async def test_after_a_refusal_at_4_the_window_probes_past_4_once_per_probe_period(
        redis: RedisClient) -> None:
    """A provider taking 4 calls in flight: the first overshoot teaches the ceiling; after it,
    the window sits at 4 and looks past it only once per PROBE_ROUNDS rounds (200 calls at 4),
    each look a single refusal that puts it back at 4, not half of it. Before: the window
    halved to 8 after the first overshoot (4 more refusals), and each later probe halved it
    again, to 2.5 (the provider half idle while it climbed back)."""
    steps = steps_for(redis, initial_window=16)
    run = await simulate(steps, limit=4, calls=1000)
    first_episode = [r for r in run["refusals"] if r < 16]
    later = [r for r in run["refusals"] if r >= 16]
    assert len(first_episode) == 12  # the 16 sent at once, less the 4 taken
    # No second overshoot, then one look past 4 per probe period at most.
    assert len(later) <= 1000 // 200 + 1, later
    assert all(b - a >= 150 for a, b in zip([16, *later], later, strict=False)), later
    # The provider is kept busy: 4 calls of 0.5 s in flight is 8 a second.
    assert run["taken"] / (run["ms"] / 1000) >= 0.9 * 8

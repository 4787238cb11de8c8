"""A guard on the one place the protocol is restated: for every script, the KEYS its header
declares, the KEYS its code uses and the keys its Steps method sends must agree.

The recording Steps below only notes how many keys each call sends; the real script then runs
against the real Redis. Every script in shared.scripts.NAMES must have been called, so a new
script without a method (or a method this test does not call) fails here."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from shared import scripts, tasks
from shared.keys import BATCHES_GROUP, Keys
from shared.redis_conn import RedisClient
from shared.steps import BatchPolicy, Steps, StoredTask
from shared.timeutil import now_ms
from tests.integration.kit import begun, complete, read_new, submit

_KEY_REF = re.compile(r"KEYS\[(\d+)\]")


class RecordingSteps(Steps):
    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        super().__init__(redis, keys)
        self.sent: defaultdict[str, set[int]] = defaultdict(set)

    async def _call(self, name: str, keys: list[str], args: Sequence[Any],
                    client: Any = None, *, together: bool = False) -> Any:
        self.sent[name].add(len(keys))
        return await super()._call(name, keys, args, client, together=together)


def declared_and_used(name: str) -> tuple[set[int], set[int]]:
    """KEYS[n] named in the script's comments, and KEYS[n] its code reads."""
    declared: set[int] = set()
    used: set[int] = set()
    for line in (scripts.DIR / f"{name}.lua").read_text().splitlines():
        code, _dash, comment = line.partition("--")
        used |= {int(n) for n in _KEY_REF.findall(code)}
        declared |= {int(n) for n in _KEY_REF.findall(comment)}
    return declared, used


async def test_every_script_gets_the_keys_it_declares_and_uses(
        redis: RedisClient, keys: Keys) -> None:
    steps = RecordingSteps(redis, keys)
    now, policy = now_ms(), BatchPolicy(size=2, timeout_ms=1000, adaptive=True)
    # Every step once, in the order a task meets them.
    a, b = await submit(steps), await submit(steps)
    entries = await read_new(redis, keys.tasks_stream, "coordinators", "c1")
    await steps.report_capacity(name="p1", free=0, expiry_ms=now + 5000,
                                taken=0, inflight=0, room=100)
    await steps.heartbeat(name="c1", expiry_ms=now + 5000, forget_before_ms=now - 60_000)
    await steps.batch("add", now=now, policy=policy, entries=[(e, f["id"]) for e, f in entries])
    await steps.batch("timer", now=now, policy=policy)
    await steps.batch("idle", now=now, policy=policy)
    await steps.batch("flush", now=now, policy=policy)
    [(entry, fields)] = await read_new(redis, keys.batches_stream, BATCHES_GROUP, "p1")
    await begun(steps, a, "tok")
    await begun(steps, b, "tok")
    await steps.count_attempt(a, "tok")
    await steps.note_try(a, "tok", b'{"provider":"p"}')
    await steps.emit(a, "tok", [("content", '{"delta":"x"}')])
    await steps.renew(a, "tok", 5000)
    await steps.renew_many([(a, "tok"), (b, "tok")], 5000)
    await steps.requeue(b, "tok", streamed=False)
    await begun(steps, b, "tok")
    await steps.release_lease(b, "tok")
    await steps.handoff(entry_id=entry, batch_id=fields["b"], now=now, task_ids=[b])
    await steps.cancel(task_id=b, tenant="acme", now=now)
    await complete(steps, a, "tok", status=tasks.FAILED)
    await steps.retry(task_id=a, tenant="acme", now=now, task_ttl_s=60,
                      stored=StoredTask("{}", "m", now, 1))
    await steps.forget(task_id=b, tenant="acme")
    await redis.set(keys.flush_lock, "lock-token")
    await steps.renew_lock(keys.flush_lock, "lock-token", 5000)
    await steps.release_lock(keys.flush_lock, "lock-token")
    await steps.hand_on_traces({a: "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})

    assert set(steps.sent) == set(scripts.NAMES), "a script no step method called"
    for name in scripts.NAMES:
        declared, used = declared_and_used(name)
        n = max(used)
        assert declared == used == set(range(1, n + 1)), (name, declared, used)
        assert steps.sent[name] == {n}, f"{name}.lua uses KEYS[1..{n}], sent {steps.sent[name]}"

"""Each provider's breaker as this processor sees it: the state is in Redis (breaker.lua), shared
by every processor; a copy here answers admission without a round trip while it is closed.

A closed breaker costs nothing per call: a success is sent only when the copy shows failures
(another processor's, or ours), and the copy is refreshed with the governor's poll, so a run of
failures spread over processors is seen. A failure is always sent. An open breaker's copy says
when its cool-down ends; then one caller takes the probe in Redis (one step: two processors
never both take it) and the others wait for its answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from shared import logs, metrics
from shared.governor import CLOSED, Breaker, BreakerPolicy, GovernorSteps
from shared.redis_conn import WAIT_OUT, wait_event
from shared.timeutil import now_ms

log = logs.get("sluice.processor")
_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Breakers:
    def __init__(self, steps: GovernorSteps, policy: BreakerPolicy, names: Iterable[str]) -> None:
        self.steps, self.policy = steps, policy
        self.names = list(names)
        # Unknown until the first look: asked for then (a fresh processor's first calls must
        # not go to a provider whose breaker is open).
        self.seen: dict[str, Breaker] = {}
        self.errors: dict[str, tuple[str, int]] = {}  # name -> (last error, epoch ms)
        self.version = 0  # moves at every copy kept: what was worked out from them is stale

    @property
    def on(self) -> bool:
        return self.policy.failures > 0

    def allows(self, name: str, now: int) -> str:
        """'yes', 'probe' (take it with :meth:`take_probe` first) or 'no'."""
        if not self.on:
            return "yes"
        seen = self.seen.get(name)
        return "probe" if seen is None else seen.allows(now)

    def until(self, name: str) -> int:
        return self.seen.get(name, CLOSED).open_until

    async def take_probe(self, name: str) -> tuple[bool, bool]:
        """(may the call go, is it the provider's probe). Closed, every call may go."""
        found = await self._step(name, "probe")
        if found is None:
            return True, False
        return found.granted, found.state == "half_open"

    async def give_back_probe(self, name: str) -> None:
        await self._step(name, "unprobe")

    async def succeeded(self, name: str) -> None:
        seen = self.seen.get(name, CLOSED)
        if self.on and (seen.state != "closed" or seen.failures):
            before = seen.state
            found = await self._step(name, "ok")
            if found is not None and before != "closed":
                log.info("breaker_closed", provider=name)

    async def failed(self, name: str, error: str) -> None:
        self.errors[name] = (error[:300], now_ms())
        if not self.on:
            return
        before = self.seen.get(name, CLOSED).state
        found = await self._step(name, "fail", error[:300])
        if found is not None and found.state == "open" and before != "open":
            log.warning("breaker_opened", provider=name, failures=found.failures,
                        open_until=found.open_until, error=error[:300])

    async def _step(self, name: str, op: str, error: str = "") -> Breaker | None:
        """The step, its answer kept; None when Redis did not answer (the breaker is advice:
        a call is not stopped for it)."""
        try:
            found = await self.steps.breaker(name, op, now_ms(), self.policy, error)
        except WAIT_OUT as exc:
            log.warning(wait_event(exc), loop="breaker", op=op, error=type(exc).__name__)
            return None
        self._keep(name, found)
        return found

    def _keep(self, name: str, found: Breaker) -> None:
        self.seen[name] = found
        self.version += 1
        metrics.breaker_state.labels(name).set(_STATES.get(found.state, 0))

    async def refresh(self) -> None:
        """Every provider's breaker as Redis has it (plain reads: nothing changes)."""
        if not self.on or not self.names:
            return
        names = self.names
        redis, keys = self.steps.redis, self.steps.keys
        with contextlib.suppress(*WAIT_OUT):
            async with redis.pipeline(transaction=False) as p:
                for name in names:
                    p.hmget(keys.breaker(name), ["state", "failures", "open_until",
                                                 "probe_until"])
                rows = await p.execute()
            for name, (state, failures, open_until, probe_until) in zip(names, rows,
                                                                        strict=True):
                state = state or "closed"
                until = probe_until if state == "half_open" else open_until
                self._keep(name, Breaker(state, int(failures or 0), int(until or 0)))

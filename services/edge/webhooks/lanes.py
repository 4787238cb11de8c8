"""Which due deliveries may start now: each target (an endpoint, or a task's own URL) is a lane
with its own concurrency and its own run of failures, so one that hangs or fails holds up
itself alone. Pure bookkeeping, no I/O: the sender (``delivery``) asks and tells.

Three caps, checked together when a delivery would start: per target
(``WEBHOOK_ENDPOINT_CONCURRENCY``), per tenant (``WEBHOOK_TENANT_CONCURRENCY``: a tenant with
many slow endpoints still takes no more than its share), and per edge
(``WEBHOOK_MAX_IN_FLIGHT``, the HTTP client's connection limit: a send never waits for a
connection, which would count against its own timeout).

The backoff of a target: from its second failure in a row, every pending delivery of the target
waits ``retry_base_s`` x 2^(failures - 2), capped at ``retry_cap_s`` (the sender moves their
``next_at``, so the wait holds across edges); the first success ends it. A delivery's own
retries back off as before, on top.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from services.edge.webhooks.store import Delivery

Target = tuple[str, str]  # (endpoint id, url): a task's own URL has the endpoint id "task"
# Targets remembered for their failures while nothing is in flight to them, at most: past it
# the oldest are forgotten (their pending deliveries were already moved back; a forgotten
# target's next failure starts its run again).
MAX_REMEMBERED = 10_000


def target(d: Delivery) -> Target:
    return d.endpoint_id, d.url


@dataclass(slots=True)
class Lane:
    in_flight: int = 0
    failures: int = 0  # failed attempts in a row


class Lanes:
    def __init__(self, per_target: int, per_tenant: int, total: int) -> None:
        self.per_target, self.per_tenant, self.total = per_target, per_tenant, total
        self.lanes: dict[Target, Lane] = {}
        self.tenants: Counter[str] = Counter()
        self.sending: set[str] = set()  # ids of the deliveries in flight

    def full_tenants(self) -> list[str]:
        return sorted(t for t, n in self.tenants.items() if n >= self.per_tenant)

    def room(self) -> int:
        return self.total - len(self.sending)

    def take(self, d: Delivery) -> bool:
        """Start ``d`` if every cap has room (and it is not in flight already)."""
        if d.id in self.sending or len(self.sending) >= self.total:
            return False
        if self.tenants[d.tenant] >= self.per_tenant:
            return False
        lane = self.lanes.setdefault(target(d), Lane())
        if lane.in_flight >= self.per_target:
            return False
        lane.in_flight += 1
        self.tenants[d.tenant] += 1
        self.sending.add(d.id)
        return True

    def done(self, d: Delivery, ok: bool) -> int:
        """``d``'s attempt ended; the failures in a row of its target now (0 after a
        success)."""
        key = target(d)
        lane = self.lanes[key]
        lane.in_flight -= 1
        self.tenants[d.tenant] -= 1
        if self.tenants[d.tenant] <= 0:
            del self.tenants[d.tenant]
        self.sending.discard(d.id)
        lane.failures = 0 if ok else lane.failures + 1
        failures = lane.failures
        if lane.in_flight == 0:
            del self.lanes[key]  # re-added last while failing: the oldest are forgotten first
            if failures:
                self.lanes[key] = lane
                self._forget_oldest()
        return failures

    def _forget_oldest(self) -> None:
        idle = (k for k, lane in self.lanes.items() if lane.in_flight == 0)
        excess = len(self.lanes) - MAX_REMEMBERED
        for key in [k for _, k in zip(range(max(0, excess)), idle, strict=False)]:
            del self.lanes[key]


def backoff_s(failures: int, base_s: float, cap_s: float) -> float:
    """How long a target's deliveries wait after ``failures`` failed attempts in a row: none
    after one (a single failure may be the delivery's own), then doubling from ``base_s``."""
    if failures < 2:
        return 0.0
    return min(cap_s, base_s * 2 ** (failures - 2))

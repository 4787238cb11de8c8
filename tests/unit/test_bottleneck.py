"""The overview's one line naming what holds tasks back, for each case."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from services.edge.ops.dashboard.figures import Snapshot, bottleneck

IDLE = Snapshot(queued=0, waiting=0, batched=0, running=0, processors=2, free_slots=16,
                coordinators=1, providers=[], tenants_active={}, tenant_limit=100)


def provider(**kw: Any) -> dict[str, Any]:
    return {"id": "p1", "model": "deepseek-chat", "limit": 8, "in_flight": 3,
            "paused_until": None, **kw}


@pytest.mark.parametrize(("state", "line"), [
    (IDLE, "nothing waits"),
    (replace(IDLE, waiting=40, running=8, providers=[provider(in_flight=8)]),
     "provider window 8 of 8 full (deepseek-chat)"),
    (replace(IDLE, waiting=3, providers=[provider(paused_until=1_900_000_000_000)]),
     "provider deepseek-chat paused until 2030-03-17T17:46:40.000Z (Retry-After)"),
    (replace(IDLE, batched=5, free_slots=0, running=16, providers=[provider()]),
     "no processor has room (2 processor(s), every slot busy)"),
    (replace(IDLE, waiting=5, processors=0, free_slots=0), "no processor is running"),
    (replace(IDLE, queued=5, coordinators=0),
     "no coordinator is running: new tasks are not batched"),
    (replace(IDLE, running=2, tenants_active={"acme": 100, "globex": 3}),
     "tenant acme at its limit (100 unfinished tasks)"),
    (replace(IDLE, waiting=2, providers=[provider()]),
     "no bottleneck: 2 task(s) on their way to the provider"),
])
def test_the_line_names_the_bottleneck(state: Snapshot, line: str) -> None:
    assert bottleneck(state) == line


def test_a_full_window_with_nothing_else_waiting_is_no_bottleneck() -> None:
    """8 of 8 in flight and nothing behind them: the provider is busy, not a bottleneck."""
    assert bottleneck(replace(IDLE, running=8, providers=[provider(in_flight=8)])) == (
        "nothing waits")

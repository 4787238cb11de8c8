"""The task page's timeline ends with the task's end: a recorded call's end is the processor's
clock, the stream's times are Redis's, so a call that ended with the task may be recorded a few
ms after the terminal event (or at the same ms); its step still comes before the end."""

from __future__ import annotations

import json

import pytest

from services.edge.ops.dashboard.story import timeline
from shared import tasks
from shared.timeutil import iso

T0 = 1_796_000_000_000


def entry(at: int, kind: str, data: dict[str, object] | None = None) -> tuple[str, dict[str, str]]:
    return f"{at}-0", {"e": kind, "d": json.dumps(data or {})}


@pytest.mark.parametrize("late_ms", [0, 1, 30])
def test_a_call_recorded_at_or_just_after_the_tasks_end_comes_before_it(late_ms: int) -> None:
    done = T0 + 100
    events = [entry(T0, tasks.EV_STATUS, {"status": tasks.QUEUED}),
              entry(T0 + 10, tasks.EV_STATUS, {"status": tasks.RUNNING}),
              entry(T0 + 50, "content", {"delta": "a"}),
              entry(done, tasks.TERMINAL_EVENT[tasks.SUCCEEDED])]
    tries = [{"provider": "a", "model": "m", "processor": "p1", "status": "succeeded",
              "started_at": iso(T0 + 12), "ended_at": iso(done + late_ms), "error": None}]
    view = {"created_at": iso(T0), "status": tasks.SUCCEEDED, "tries": tries}
    steps = timeline(events, {"processor": "p1"}, view)["timeline"]
    assert steps[-1]["event"] == "status succeeded"
    assert steps[-2]["event"] == "attempt 1 on a (m): succeeded"
    since = [s["since_submit_ms"] for s in steps]
    assert since == sorted(since)

"""JSON log lines: one compact JSON object a line, whatever the values (an integer past 64
bits or an object without a JSON form goes through the fallback, never fails the log call)."""

from __future__ import annotations

import asyncio
import json

import pytest
import structlog

from services.processor import telemetry
from shared import logs
from shared.steps import Begun


class Thing:
    def __repr__(self) -> str:
        return "Thing()"


@pytest.fixture
def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    logs.configure("json", "info")
    try:
        log = logs.get("sluice.test")
        log.info("task", task_id="tsk_1", ms=1.5, attempts=1, status=None)
        log.info("odd", big=2**70, thing=Thing())
        out = capsys.readouterr().out.splitlines()
    finally:
        structlog.reset_defaults()
    assert all(": " not in line and ", " not in line for line in out)
    return [json.loads(line) for line in out]


def test_json_lines_are_compact_and_take_any_value(lines: list[dict[str, object]]) -> None:
    task, odd = lines
    assert task["event"] == "task" and task["ms"] == 1.5 and task["status"] is None
    assert odd["big"] == 2**70 and odd["thing"] == "Thing()"


def test_a_line_logged_while_a_request_is_handled_carries_its_tenant_and_trace_id(
        capsys: pytest.CaptureFixture[str]) -> None:
    trace = "0af7651916cd43dd8448eb211c80319c"
    logs.configure("json", "info")
    try:
        log = logs.get("sluice.test")
        work = logs.Work(f"00-{trace}-b7ad6b7169203331-01")
        bound = logs.WORK.set(work)
        log.info("before_the_key")  # the key not checked yet: no tenant
        work.tenant = "acme"
        log.info("after_the_key", tenant_of_its_own="kept")
        log.info("explicit", tenant="named")  # a value the line gives wins
        logs.WORK.reset(bound)
        log.info("after_the_request")
        out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    finally:
        structlog.reset_defaults()
    before, after, explicit, done = out
    assert before["trace_id"] == trace and "tenant" not in before
    assert after["tenant"] == "acme" and after["trace_id"] == trace
    assert explicit["tenant"] == "named"
    assert "tenant" not in done and "trace_id" not in done


def test_a_line_logged_by_a_task_run_carries_its_tenant_and_trace_id_and_no_other(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The processor sets each run's facts (telemetry.begun) in the run's own asyncio task:
    lines of another task (another run, the processor's loops) do not carry them."""
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    logs.configure("json", "info")

    async def run(tenant: str, traceparent: str | None, started: asyncio.Event,
                  other_done: asyncio.Event) -> None:
        task = {"tenant": tenant, "created_at": "1700000000000"}
        if traceparent:
            task["traceparent"] = traceparent
        telemetry.begun(Begun(fence=1, attempts=1, cancel_requested=False, counted=True,
                              task=task))
        started.set()
        await other_done.wait()  # the other run logs while this one's work is bound
        logs.get("sluice.test").info("run", who=tenant or "anonymous")

    async def main() -> None:
        a_started, b_done = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(run("acme", f"00-{trace}-00f067aa0ba902b7-01", a_started,
                                        b_done))
        await a_started.wait()
        done = asyncio.Event()
        done.set()
        # no tenant, no trace: neither field
        await asyncio.create_task(run("", None, asyncio.Event(), done))
        b_done.set()
        await first
        logs.get("sluice.test").info("loop")

    try:
        asyncio.run(main())
        out = {line["event"] + str(line.get("who", "")): line for line in
               map(json.loads, capsys.readouterr().out.splitlines())}
    finally:
        structlog.reset_defaults()
    assert out["runacme"]["tenant"] == "acme" and out["runacme"]["trace_id"] == trace
    assert "tenant" not in out["runanonymous"] and "trace_id" not in out["runanonymous"]
    assert "tenant" not in out["loop"] and "trace_id" not in out["loop"]

"""JSON log lines: one compact JSON object a line, whatever the values (an integer past 64
bits or an object without a JSON form goes through the fallback, never fails the log call)."""

from __future__ import annotations

import json

import pytest
import structlog

from shared import logs


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
        work = logs.RequestWork(f"00-{trace}-b7ad6b7169203331-01")
        bound = logs.REQUEST.set(work)
        log.info("before_the_key")  # the key not checked yet: no tenant
        work.tenant = "acme"
        log.info("after_the_key", tenant_of_its_own="kept")
        log.info("explicit", tenant="named")  # a value the line gives wins
        logs.REQUEST.reset(bound)
        log.info("after_the_request")
        out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    finally:
        structlog.reset_defaults()
    before, after, explicit, done = out
    assert before["trace_id"] == trace and "tenant" not in before
    assert after["tenant"] == "acme" and after["trace_id"] == trace
    assert explicit["tenant"] == "named"
    assert "tenant" not in done and "trace_id" not in done

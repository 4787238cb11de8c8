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

"""The view a finishing processor stores is the public view of the task's hash with the run's
own facts over it, key for key and in the same order (clients read its JSON as is)."""

from __future__ import annotations

import orjson

from shared import tasks
from shared.timeutil import iso

HASH = {"id": "tsk_1", "status": "running", "model": "m", "created_at": "1700000000000",
        "started_at": "1700000000100", "batch_id": "", "attempts": "1",
        "request": orjson.dumps({"model": "m", "messages": [],
                                 "metadata": {"user": "u1"}}).decode()}


def _overwritten(**facts: object) -> dict[str, object]:
    return {**tasks.view_from_redis(HASH), **facts}


def test_the_terminal_view_is_the_hash_view_with_the_run_s_facts() -> None:
    result = tasks.result_dict("hi", "", "stop", None)
    facts = {"status": "succeeded", "attempts": 2, "result": result, "error": None,
             "completed_at": iso(1700000000900), "started_at": iso(1700000000100),
             "batch_id": "b1"}
    for request in (None, orjson.loads(HASH["request"])):
        view = tasks.terminal_view(HASH, status="succeeded", attempts=2, result=result,
                                   error=None, started_at=1700000000100,
                                   completed_at=1700000000900, batch_id="b1", request=request)
        expected = _overwritten(**facts)
        assert orjson.dumps(view) == orjson.dumps(expected)
        assert view["metadata"] == {"user": "u1"}

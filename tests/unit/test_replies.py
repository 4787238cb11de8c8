"""A JSON answer holds about its own size. aiohttp keeps a keep-alive connection's last
response until the next one is done, so each open connection holds one answer's body: orjson
hands back its bytes in a buffer of at least 4 KiB that it never shrinks, whatever their
length (``sys.getsizeof`` reports only the length)."""

from __future__ import annotations

import orjson
from aiohttp.test_utils import make_mocked_request

from harness.heap import held_each
from services.edge.plumbing.errors import ApiError, error_response
from services.edge.plumbing.replies import json_response


def test_a_kept_json_answer_holds_about_its_size() -> None:
    body = {"id": "t" * 26, "status": "queued"}
    answer = json_response(body, status=202)
    assert answer.body == orjson.dumps(body)
    # The response object, its headers and its 45-byte body: under 1 KiB (4.5 KiB before).
    assert held_each(lambda: json_response(body, status=202)) < 1024


def test_a_kept_error_answer_holds_about_its_size() -> None:
    request = make_mocked_request("GET", "/api/tasks/t1")
    err = ApiError(404, "not_found", "no task with that id")
    answer = error_response(request, err)
    assert isinstance(answer.body, bytes)
    assert orjson.loads(answer.body) == {"error": {"code": "not_found",
                                                   "message": "no task with that id"}}
    assert held_each(lambda: error_response(request, err)) < 1024

"""OpenAI batches without I/O: the batch object, checking an input file's lines, and the lines
of the output and error files. The runner (``batch_runner``) and the views use these.

Statuses move one way, as OpenAI's: ``validating`` -> ``failed`` | ``in_progress``;
``in_progress`` -> ``finalizing`` -> ``completed``, or -> ``expired`` when the window ends, or
-> ``cancelling`` -> ``cancelled``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from services.edge.openai.batch.store import Line
from services.edge.openai.chat.api import Completion
from services.edge.openai.responses import api as responses
from services.edge.plumbing.errors import ApiError
from services.edge.settings import EdgeSettings
from services.edge.tasks.validation import parse_task
from shared import tasks

VALIDATING, FAILED, IN_PROGRESS, FINALIZING = "validating", "failed", "in_progress", "finalizing"
COMPLETED, EXPIRED, CANCELLING, CANCELLED = "completed", "expired", "cancelling", "cancelled"
ACTIVE = (VALIDATING, IN_PROGRESS, FINALIZING, CANCELLING)
CANCELLABLE = (VALIDATING, IN_PROGRESS)
ENDPOINT, RESPONSES = "/v1/chat/completions", "/v1/responses"
ENDPOINTS = (ENDPOINT, RESPONSES)  # a batch's lines all go to its one endpoint
WINDOW = "24h"
MAX_ERRORS = 1000  # errors.data entries kept for one failed file
# Why a line that never ran is in the error file.
UNSENT = {EXPIRED: ("batch_expired", "This request could not be executed before the "
                    "completion window expired."),
          CANCELLED: ("batch_cancelled", "This request was not executed: the batch was "
                      "cancelled.")}


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(16)


def task_id_of(batch_id: str, line: int) -> str:
    """A line's task id, derived so that queueing a line twice names one task. The batch id is
    random, so these ids are as unguessable as ``tasks.new_task_id``'s."""
    return "tsk_" + hashlib.sha256(f"{batch_id}:{line}".encode()).hexdigest()[:32]


def derived_file_id(batch_id: str, kind: str) -> str:
    return "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:24]


def new_batch(batch_id: str, input_file_id: str, metadata: dict[str, str] | None, now_s: int,
              window_s: int, endpoint: str = ENDPOINT) -> dict[str, Any]:
    return {"id": batch_id, "object": "batch", "endpoint": endpoint, "errors": None,
            "input_file_id": input_file_id, "completion_window": WINDOW, "status": VALIDATING,
            "output_file_id": None, "error_file_id": None, "created_at": now_s,
            "in_progress_at": None, "expires_at": now_s + window_s, "finalizing_at": None,
            "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
            "cancelled_at": None, "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": metadata, "model": None, "usage": usage(0, 0)}


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}


def moved(doc: dict[str, Any], status: str, now_s: int) -> dict[str, Any]:
    """The doc in a new status, with that status's ``*_at`` stamped."""
    return {**doc, "status": status, f"{status}_at": now_s}


# --- checking an input file ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Checked:
    lines: list[Line]               # 0-based ``line`` numbers, in file order
    errors: list[dict[str, Any]]    # OpenAI's errors.data entries (1-based ``line``)
    model: str | None


def _error(code: str, line: int | None, message: str, param: str | None = None
           ) -> dict[str, Any]:
    return {"code": code, "line": line, "message": message, "param": param}


def check_file(batch_id: str, content: bytes, settings: EdgeSettings,
               endpoint: str = ENDPOINT) -> Checked:
    """Every line must be a JSON request to the batch's endpoint, with a unique ``custom_id``
    and a body that endpoint would accept (the same checks, so a line that passes here never
    gets a 422 there)."""
    lines: list[Line] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    for number, raw in enumerate(content.split(b"\n"), start=1):
        if not raw.strip() or len(errors) >= MAX_ERRORS:
            continue
        problem, payload, custom_id = _check_line(raw, number, seen, settings, endpoint)
        if problem is not None:
            errors.append(problem)
            continue
        assert payload is not None and custom_id is not None
        model = model or payload["model"]
        lines.append(Line(len(lines), custom_id, task_id_of(batch_id, len(lines)),
                          orjson.dumps(payload).decode()))
    if not lines and not errors:
        errors.append(_error("empty_file", None, "The input file is empty."))
    if len(lines) > settings.batch_api.max_file_lines:
        errors.append(_error("too_many_tasks", None, f"The input file has {len(lines)} "
                             f"requests, more than {settings.batch_api.max_file_lines}."))
    return Checked(lines, errors, model)


def _check_line(raw: bytes, number: int, seen: set[str], settings: EdgeSettings,
                endpoint: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None,
                                        str | None]:
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        item = None
    if not isinstance(item, dict):
        return _error("invalid_json_line", number,
                      "This line is not parseable as valid JSON."), None, None
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not 0 < len(custom_id) <= 512:
        return _error("missing_required_parameter", number, "custom_id: a non-empty string of "
                      "at most 512 characters is required.", "custom_id"), None, None
    if item.get("method", "POST") != "POST":
        return _error("invalid_method", number, "method: only POST is supported.",
                      "method"), None, None
    url = item.get("url")
    if url != endpoint:
        return _error("url_mismatch", number, f"The URL {url!r} does not match the batch's "
                      f"endpoint {endpoint!r}.", "url"), None, None
    if custom_id in seen:
        return _error("duplicate_custom_id", number, "The custom_id for this request is a "
                      "duplicate of another request. The custom_id parameter must be unique "
                      "for each request in a batch.", "custom_id"), None, None
    seen.add(custom_id)
    try:
        if endpoint == RESPONSES:
            payload = responses.batch_payload(item.get("body"), settings)
        else:
            payload = parse_task(item.get("body"), settings, openai=True).payload
    except ApiError as err:
        return _error(err.code or "invalid_request", number, err.message,
                      "body" + (f".{err.param}" if err.param else "")), None, None
    return None, payload, custom_id


# --- the output and error files ------------------------------------------------------------------
def request_id(task_id: str) -> str:
    return "batch_req_" + task_id.removeprefix("tsk_")


def output_line(line: Line, row: dict[str, Any], endpoint: str = ENDPOINT) -> bytes:
    """A succeeded line: its response body is a whole ``chat.completion``, or the
    ``response`` object of a line to ``/v1/responses``."""
    if endpoint == RESPONSES:  # the task's request holds the context the line queued
        body = responses.batch_body(line.task_id, row, orjson.loads(row["request"]))
    else:
        result = tasks.view_from_row(row)["result"] or {}
        body = Completion(line.task_id, row.get("model") or "",
                          int(row.get("created_at") or 0) // 1000).whole(result)
    return orjson.dumps({"id": request_id(line.task_id), "custom_id": line.custom_id,
                         "response": {"status_code": 200, "request_id": line.task_id,
                                      "body": body}, "error": None})


def error_line(line: Line, row: dict[str, Any] | None, final_status: str) -> bytes:
    """A line that failed (the provider's error as the response) or never ran to an answer
    (a top-level ``error``: cancelled or expired)."""
    if row is not None and row["status"] == tasks.FAILED:
        error = tasks.loads_or_none(row.get("error")) or {}
        code = str(error.get("code") or "provider_error")
        status = int(code[5:]) if code.startswith("http_") and code[5:].isdigit() else 500
        if isinstance(error.get("status"), int) and 400 <= error["status"] <= 599:
            status = error["status"]  # the provider's own answer (400: a field it refused)
        body = {"error": {"message": error.get("message") or "the request failed",
                          "type": error.get("type") or "api_error", "code": code,
                          "param": error.get("param")}}
        return orjson.dumps({"id": request_id(line.task_id), "custom_id": line.custom_id,
                             "response": {"status_code": status, "request_id": line.task_id,
                                          "body": body}, "error": None})
    code, message = UNSENT.get(final_status, UNSENT[CANCELLED])
    return orjson.dumps({"id": request_id(line.task_id), "custom_id": line.custom_id,
                         "response": None, "error": {"code": code, "message": message}})

"""Scripted faults: parse a fault spec and decide whether it applies to this request.

A spec arrives as `metadata.mock.fault` in the request body or as JSON in the
`X-Mock-Fault` header (header wins). Exactly one fault kind per spec keeps the behaviour
obvious; specs are validated strictly so a typo in a test fails loudly instead of
silently not injecting anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson


class FaultKind(StrEnum):
    STATUS = "status"  # answer an HTTP error status with an OpenAI error envelope
    CUT = "cut"  # N content tokens, then drop the connection (no finish, no [DONE])
    STALL = "stall"  # N content tokens, then silence for stall_s, then carry on
    JSON = "json"  # JSON body even though stream:true was asked
    STREAM_ERROR = "stream_error"  # N content tokens, then an SSE error event, then end
    ANSWER = "answer"  # a 200 that is no answer, in one of the shapes of AnswerShape
    USAGE = "usage"  # a normal answer whose usage object is the one given (poison numbers)
    HEADERS = "headers"  # a normal answer with these extra response headers (x-ratelimit-*)
    CONTENT_TYPE = "content_type"  # a normal stream sent under this Content-Type (text/plain)


class AnswerShape(StrEnum):
    """200 answers that are not answers, each seen from a real server or proxy."""

    EMPTY_JSON = "empty_json"  # application/json `{}`
    NO_CHOICES = "no_choices"  # application/json `{"status": "ok"}`: a proxy's health page
    ONLY_DONE = "only_done"  # a stream of only `data: [DONE]`
    UNPARSEABLE = "unparseable"  # a stream of unparseable `data:` lines, then [DONE]
    ERROR_DATA = "error_data"  # `data: {"error": {...}}`, then [DONE]
    ERROR_EVENT = "error_event"  # `event: error` + `data: {"message", "code"}`
    ERROR_FIELD = "error_field"  # a non-standard `error: {...}` SSE field, then [DONE]
    ERROR_DONE = "error_done"  # the error object and [DONE] merged in one event
    OBJECT_ERROR = "object_error"  # vLLM's `data: {"object": "error", "message", "code"}`
    ENDLESS_LINE = "endless_line"  # `data: xxxx...` with no line end, until the client leaves


class FaultSpecError(ValueError):
    """Invalid fault spec; the message names the offending field."""


# Spec key that selects the kind -> modifiers allowed with that kind.
_KIND_KEYS: dict[str, tuple[FaultKind, frozenset[str]]] = {
    "status": (FaultKind.STATUS, frozenset({"retry_after", "message", "type", "code"})),
    "cut_after": (FaultKind.CUT, frozenset()),
    "stall_after": (FaultKind.STALL, frozenset({"stall_s"})),
    "json": (FaultKind.JSON, frozenset()),
    "error_in_stream_after": (FaultKind.STREAM_ERROR, frozenset({"message"})),
    "answer": (FaultKind.ANSWER, frozenset({"message", "code"})),
    "usage": (FaultKind.USAGE, frozenset()),
    "headers": (FaultKind.HEADERS, frozenset()),
    "content_type": (FaultKind.CONTENT_TYPE, frozenset()),
}
_COMMON_KEYS = frozenset({"times", "key"})
DEFAULT_STALL_S = 3600.0


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    # Counter key for `times`: the explicit `key`, else the canonical spec itself.
    key: str
    times: int | None = None  # None = apply to every request carrying this spec
    status: int = 0
    retry_after: str | None = None
    message: str | None = None
    error_type: str | None = None
    code: str | int | None = None
    after: int = 0  # content tokens sent before a CUT/STALL/STREAM_ERROR fault fires
    stall_s: float = DEFAULT_STALL_S
    answer: AnswerShape | None = None
    usage: dict[str, Any] | None = None  # the usage object a USAGE fault answers with
    headers: dict[str, str] | None = None  # what a HEADERS fault adds to the answer's headers
    content_type: str | None = None  # what a CONTENT_TYPE fault's stream is labelled


def _count(spec: dict[str, Any], name: str) -> int:
    value = spec[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FaultSpecError(f"fault.{name} must be a non-negative integer")
    return value


def _code(code: object) -> str | int | None:
    if code is not None and (isinstance(code, bool) or not isinstance(code, str | int)):
        raise FaultSpecError("fault.code must be a string or an integer")
    return code


def parse_fault(spec: object) -> Fault:
    """Validate a decoded spec object and turn it into a Fault."""
    if not isinstance(spec, dict):
        raise FaultSpecError("fault must be a JSON object")
    kinds = [k for k in spec if k in _KIND_KEYS]
    if len(kinds) != 1:
        raise FaultSpecError("fault must contain exactly one of: " + ", ".join(sorted(_KIND_KEYS)))
    kind_key = kinds[0]
    kind, modifiers = _KIND_KEYS[kind_key]
    unknown = set(spec) - {kind_key} - modifiers - _COMMON_KEYS
    if unknown:
        raise FaultSpecError(f"fault.{sorted(unknown)[0]} is not valid with fault.{kind_key}")

    times: int | None = None
    if spec.get("times") is not None:
        times = _count(spec, "times")
    key = spec.get("key")
    if key is None:
        key = orjson.dumps(spec, option=orjson.OPT_SORT_KEYS).decode()
    elif not isinstance(key, str):
        raise FaultSpecError("fault.key must be a string")

    fields: dict[str, Any] = {"kind": kind, "key": key, "times": times}
    message = spec.get("message")
    if message is not None:
        if not isinstance(message, str):
            raise FaultSpecError("fault.message must be a string")
        fields["message"] = message

    if kind is FaultKind.STATUS:
        status = spec["status"]
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise FaultSpecError("fault.status must be an integer in 400..599")
        fields["status"] = status
        retry_after = spec.get("retry_after")
        if retry_after is not None:
            if isinstance(retry_after, bool) or not isinstance(retry_after, str | int | float):
                raise FaultSpecError("fault.retry_after must be a string or a number")
            fields["retry_after"] = str(retry_after)
        error_type = spec.get("type")
        if error_type is not None and not isinstance(error_type, str):
            raise FaultSpecError("fault.type must be a string")
        fields["error_type"] = error_type
        fields["code"] = _code(spec.get("code"))
    elif kind is FaultKind.JSON:
        if spec["json"] is not True:
            raise FaultSpecError("fault.json must be true")
    elif kind is FaultKind.ANSWER:
        if spec["answer"] not in set(AnswerShape):
            raise FaultSpecError("fault.answer must be one of: " + ", ".join(AnswerShape))
        fields["answer"] = AnswerShape(spec["answer"])
        fields["code"] = _code(spec.get("code"))
    elif kind is FaultKind.USAGE:
        if not isinstance(spec["usage"], dict):
            raise FaultSpecError("fault.usage must be an object (sent as the answer's usage)")
        fields["usage"] = spec["usage"]
    elif kind is FaultKind.HEADERS:
        headers = spec["headers"]
        if not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise FaultSpecError("fault.headers must be an object of strings")
        fields["headers"] = headers
    elif kind is FaultKind.CONTENT_TYPE:
        if not isinstance(spec["content_type"], str) or not spec["content_type"]:
            raise FaultSpecError("fault.content_type must be a non-empty string")
        fields["content_type"] = spec["content_type"]
    else:
        fields["after"] = _count(spec, kind_key)
        if kind is FaultKind.STALL and spec.get("stall_s") is not None:
            stall_s = spec["stall_s"]
            if (
                isinstance(stall_s, bool)
                or not isinstance(stall_s, int | float)
                or not math.isfinite(stall_s)
                or stall_s < 0
            ):
                raise FaultSpecError("fault.stall_s must be a non-negative number")
            fields["stall_s"] = float(stall_s)
    return Fault(**fields)


DEFAULT_ANSWER_MESSAGE = "mock: injected error in a 200 answer"
_DONE = b"data: [DONE]\n\n"


def bad_answer(fault: Fault) -> tuple[str, bytes]:
    """(content type, whole body) of an ANSWER fault; ENDLESS_LINE is written by the app."""
    shape, message = fault.answer, fault.message or DEFAULT_ANSWER_MESSAGE
    code = 500 if fault.code is None else fault.code
    error = {"message": message, "type": "server_error", "code": code}
    if shape is AnswerShape.EMPTY_JSON:
        return "application/json", b"{}"
    if shape is AnswerShape.NO_CHOICES:
        return "application/json", b'{"status": "ok"}'
    bodies: dict[AnswerShape | None, bytes] = {
        AnswerShape.ONLY_DONE: _DONE,
        AnswerShape.UNPARSEABLE: b"data: <html>upstream ok</html>\n\ndata: {\"choices\": [\n\n"
        + _DONE,
        AnswerShape.ERROR_DATA: b"data: " + orjson.dumps({"error": error}) + b"\n\n" + _DONE,
        AnswerShape.ERROR_EVENT: b"event: error\ndata: "
        + orjson.dumps({"message": message, "code": code}) + b"\n\n",
        AnswerShape.ERROR_FIELD: b"error: " + orjson.dumps(error) + b"\n\n" + _DONE,
        AnswerShape.ERROR_DONE: b"data: " + orjson.dumps({"error": error}) + b"\n" + _DONE,
        AnswerShape.OBJECT_ERROR: b"data: " + orjson.dumps(
            {"object": "error", "message": message, "type": "BadRequestError", "param": None,
             "code": code}) + b"\n\n",
    }
    body = bodies.get(shape)
    if body is None:
        raise ValueError(f"no fixed body for answer shape {shape}")
    return "text/event-stream", body


def parse_fault_header(raw: str) -> Fault:
    try:
        spec = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise FaultSpecError("X-Mock-Fault header is not valid JSON") from None
    return parse_fault(spec)


class FaultCounters:
    """Per-key request counters, so `times` can script "fail twice, then succeed"."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def claim(self, fault: Fault) -> bool:
        """Count this request against the fault's key; True if the fault should fire."""
        seen = self._seen.get(fault.key, 0) + 1
        self._seen[fault.key] = seen
        return fault.times is None or seen <= fault.times

    def clear(self) -> None:
        self._seen.clear()

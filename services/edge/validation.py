"""Turning a request body into a task request, or a clear 4xx naming what is wrong.

``POST /api/tasks`` is strict: an unknown top-level field is a 422, so a typo never silently
changes what is sent to the model. ``/v1/chat/completions`` accepts and drops the OpenAI fields
Sluice does not forward (tools, n, logprobs, ...), so unmodified SDKs keep working.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from services.edge.errors import ApiError
from services.edge.settings import EdgeSettings
from shared import deadlines
from shared.timeutil import now_ms

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
TASK_FIELDS = frozenset({"messages", "prompt", "model", "max_tokens", "temperature", "top_p",
                         "stop", "metadata", "deadline"})


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """What is sent to the provider (``payload``, less our own ``deadline`` and, for a real
    provider, ``metadata``), the model it names, and its explicit deadline (epoch ms)."""

    payload: dict[str, Any]
    model: str
    deadline_at: int | None = None


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", f"{field}: {message}", param=field)


async def read_json(request: web.Request, max_bytes: int) -> Any:
    """Read a JSON body, refusing anything larger than ``max_bytes`` before buffering it."""
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    length = request.content_length
    if length is not None and length > max_bytes:
        raise ApiError(413, "body_too_large", f"the body is larger than {max_bytes} bytes")
    if length is not None:  # known and within the limit: one read, the common case
        try:
            return _loads(await request.content.readexactly(length))
        except asyncio.IncompleteReadError:
            raise ApiError(400, "incomplete_body", "the body ended before Content-Length") \
                from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65_536):
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "body_too_large", f"the body is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return _loads(b"".join(chunks))


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None


def parse_task(body: Any, settings: EdgeSettings, *, openai: bool = False) -> TaskRequest:
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    if not openai:
        unknown = sorted(set(body) - TASK_FIELDS)
        if unknown:
            raise _invalid(unknown[0], "unknown field")
    messages = _messages(body, settings, openai)
    model = body.get("model")
    if model is None:
        model = settings.provider.ai_model
    elif not isinstance(model, str) or not 0 < len(model) <= 200:
        raise _invalid("model", "must be a non-empty string of at most 200 characters")
    payload: dict[str, Any] = {"model": model, "messages": messages}
    # OpenAI's newer clients send max_completion_tokens; both are checked, max_tokens wins.
    for field in ("max_completion_tokens", "max_tokens") if openai else ("max_tokens",):
        if body.get(field) is not None:
            payload["max_tokens"] = _int(field, body[field], 1, settings.max_tokens_limit)
    for name, hi in (("temperature", 2.0), ("top_p", 1.0)):
        if body.get(name) is not None:
            payload[name] = _number(name, body[name], 0.0, hi)
    if body.get("stop") is not None:
        payload["stop"] = _stop(body["stop"])
    if body.get("metadata") is not None:
        payload["metadata"] = _metadata(body["metadata"], settings.max_metadata_bytes)
    deadline_at = None
    if body.get("deadline") is not None:
        try:
            deadline_at = deadlines.parse(body["deadline"], now_ms())
        except deadlines.DeadlineError as exc:
            raise _invalid("deadline", str(exc)) from None
        # Kept as given (seconds count from the submit time the task hash records), so an
        # idempotent replay of the same body hashes the same.
        payload["deadline"] = body["deadline"]
    return TaskRequest(payload=payload, model=model, deadline_at=deadline_at)


def _messages(body: dict[str, Any], settings: EdgeSettings, openai: bool) -> list[dict[str, Any]]:
    if "messages" not in body:
        prompt = None if openai else body.get("prompt")
        if prompt is None:
            raise _invalid("messages", "required" + ("" if openai else " (or give a prompt)"))
        if not isinstance(prompt, str) or not prompt:
            raise _invalid("prompt", "must be a non-empty string")
        if len(prompt) > settings.max_text_chars:
            raise _invalid("prompt", f"longer than {settings.max_text_chars} characters")
        return [{"role": "user", "content": prompt}]
    if "prompt" in body and not openai:
        raise _invalid("prompt", "give either messages or prompt, not both")
    raw = body["messages"]
    if not isinstance(raw, list) or not raw:
        raise _invalid("messages", "must be a non-empty array")
    if len(raw) > settings.max_messages:
        raise _invalid("messages", f"at most {settings.max_messages} messages")
    total = 0
    out = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _invalid(where, "must be an object")
        role = msg.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise _invalid(f"{where}.role", f"must be one of {', '.join(sorted(ROLES))}")
        content = msg.get("content")
        total += _content_length(f"{where}.content", content)
        if total > settings.max_text_chars:
            raise _invalid("messages", f"more than {settings.max_text_chars} characters in all")
        clean: dict[str, Any] = {"role": role, "content": content}
        name = msg.get("name")
        if name is not None:
            if not isinstance(name, str) or not 0 < len(name) <= 64:
                raise _invalid(f"{where}.name", "must be a string of 1 to 64 characters")
            clean["name"] = name
        out.append(clean)
    return out


def _content_length(field: str, content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list) and content:
        total = 0
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                raise _invalid(f"{field}[{j}]", "must be an object")
            text = part.get("text")
            if part.get("type") != "text" or not isinstance(text, str):
                raise _invalid(f"{field}[{j}]", "only text parts are supported")
            total += len(text)
        return total
    raise _invalid(field, "must be a string or an array of text parts")


def _int(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema counts 8.0 as an integer, so do we
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(field, "must be an integer")
    if not lo <= value <= hi:
        raise _invalid(field, f"must be between {lo} and {hi}")
    return value


def _number(field: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid(field, "must be a number")
    if not lo <= value <= hi:
        raise _invalid(field, f"must be between {lo} and {hi}")
    return float(value)


def _stop(value: Any) -> str | list[str]:
    if isinstance(value, str) and 0 < len(value) <= 256:
        return value
    if (isinstance(value, list) and 0 < len(value) <= 4
            and all(isinstance(s, str) and 0 < len(s) <= 256 for s in value)):
        return value
    raise _invalid("stop", "must be a string or an array of at most 4 strings")


def _metadata(value: Any, max_bytes: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid("metadata", "must be an object")
    if len(orjson.dumps(value)) > max_bytes:
        raise _invalid("metadata", f"larger than {max_bytes} bytes as JSON")
    return value

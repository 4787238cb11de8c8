"""Turning a request body into a task request, or a clear 4xx naming what is wrong.

``POST /api/tasks`` is strict: an unknown top-level field is a 422, so a typo never silently
changes what is sent to the model. ``/v1/chat/completions`` accepts and drops the OpenAI fields
Sluice does not forward (tools, n, logprobs, ...), so unmodified SDKs keep working.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from services.edge.plumbing.bodies import INT_MAX, INT_MIN
from services.edge.plumbing.errors import ApiError
from services.edge.settings import EdgeSettings
from shared import deadlines
from shared.providers import MAX_MODEL_CHARS, valid_model_name
from shared.timeutil import now_ms

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
TASK_FIELDS = frozenset({"messages", "prompt", "model", "max_tokens", "temperature", "top_p",
                         "stop", "metadata", "deadline", "priority"})
# ``priority``: lower runs sooner (vLLM's and LiteLLM's convention), 0 by default; each step is
# worth PRIORITY_AGING_S of waiting, so a low priority delays a task but never starves it.
PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
FLEX_PRIORITY = 10  # /v1's service_tier "flex": cheaper, slower, later
PRIORITY_HEADER = "X-Sluice-Priority"  # /v1: for clients that cannot add a body field
PRIORITY_HEADER_PATTERN = "^ *-?(1000|[0-9]{1,3}) *$"  # the same in the OpenAPI document
PRIORITY_HEADER_VALUE = re.compile(PRIORITY_HEADER_PATTERN)


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """What is sent to the provider (``payload``, less our own ``deadline`` and, for a real
    provider, ``metadata``), the model it names, and its explicit deadline (epoch ms)."""

    payload: dict[str, Any]
    model: str
    deadline_at: int | None = None
    priority: int = 0


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", f"{field}: {message}", param=field)


def parse_task(body: Any, settings: EdgeSettings, *, openai: bool = False,
               priority_header: str | None = None) -> TaskRequest:
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    if not openai:
        unknown = sorted(set(body) - TASK_FIELDS)
        if unknown:
            raise _invalid(unknown[0], "unknown field")
    messages = _messages(body, settings, openai)
    model = _model(body.get("model"), settings, openai)
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
    priority = _priority(body, openai, priority_header)
    if priority is not None:
        payload["priority"] = priority  # ours, like deadline: the processor keeps it to itself
    return TaskRequest(payload=payload, model=model, deadline_at=deadline_at,
                       priority=priority or 0)


def _priority(body: dict[str, Any], openai: bool, header: str | None) -> int | None:
    """The body's ``priority``; on /v1 failing that the priority header, then
    ``service_tier: "flex"`` (a low priority). None: not asked for."""
    # A bad header is refused even when the body's field wins: nothing malformed is ignored.
    if openai and header is not None and not PRIORITY_HEADER_VALUE.match(header.strip()):
        raise ApiError(422, "invalid_request", f"{PRIORITY_HEADER}: must be an integer "
                       f"from {PRIORITY_MIN} to {PRIORITY_MAX}", param=PRIORITY_HEADER)
    if body.get("priority") is not None:
        return _int("priority", body["priority"], PRIORITY_MIN, PRIORITY_MAX)
    if not openai:
        return None
    if header is not None:
        return int(header)
    tier = body.get("service_tier")
    if tier is not None and not isinstance(tier, str):
        raise _invalid("service_tier", "must be a string")
    return FLEX_PRIORITY if tier == "flex" else None


def _model(model: Any, settings: EdgeSettings, openai: bool) -> str:
    if model is None:
        return settings.provider.ai_model
    if not isinstance(model, str) or not valid_model_name(model):
        raise _invalid("model", f"must be a string of 1 to {MAX_MODEL_CHARS} characters, none "
                                "of them a control character")
    if model not in settings.models:
        if openai:  # OpenAI's answer, word for word, so SDKs raise their NotFoundError
            raise ApiError(404, "model_not_found", f"The model `{model}` does not exist or you "
                           "do not have access to it.", param="model",
                           openai_type="invalid_request_error")
        raise ApiError(422, "model_not_found", f"model: {model!r} is not served here "
                       "(GET /v1/models lists the models)", param="model")
    return model


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
        clean: dict[str, Any] = {"role": role, "content": content}
        if msg.get("tool_calls") is not None:
            if role != "assistant":
                raise _invalid(f"{where}.tool_calls", "only an assistant message has tool_calls")
            clean["tool_calls"] = _tool_calls(f"{where}.tool_calls", msg["tool_calls"])
            total += sum(len(c["function"]["arguments"]) for c in clean["tool_calls"])
        if content is not None or "tool_calls" not in clean:  # null beside tool calls
            total += _content_length(f"{where}.content", content)
        if total > settings.max_text_chars:
            raise _invalid("messages", f"more than {settings.max_text_chars} characters in all")
        tool_call_id = msg.get("tool_call_id")
        if role == "tool":  # the provider needs it to match the answer to its call
            clean["tool_call_id"] = _name(f"{where}.tool_call_id", tool_call_id, MAX_ID_CHARS)
        elif tool_call_id is not None:
            raise _invalid(f"{where}.tool_call_id", "only a tool message has tool_call_id")
        if msg.get("name") is not None:
            clean["name"] = _name(f"{where}.name", msg["name"], 64)
        out.append(clean)
    return out


MAX_TOOL_CALLS = 128
MAX_ID_CHARS = 256


def _name(field: str, value: Any, most: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= most:
        raise _invalid(field, f"must be a string of 1 to {most} characters")
    return value


def _tool_calls(field: str, value: Any) -> list[dict[str, Any]]:
    """An assistant's tool calls in OpenAI's shape, rebuilt member by member: what the
    provider gets is exactly what was checked."""
    if not isinstance(value, list) or not 0 < len(value) <= MAX_TOOL_CALLS:
        raise _invalid(field, f"must be an array of 1 to {MAX_TOOL_CALLS} tool calls")
    calls = []
    for k, call in enumerate(value):
        where = f"{field}[{k}]"
        if not isinstance(call, dict):
            raise _invalid(where, "must be an object")
        call_id = _name(f"{where}.id", call.get("id"), MAX_ID_CHARS)
        if call.get("type") != "function":
            raise _invalid(f"{where}.type", "must be \"function\"")
        function = call.get("function")
        if not isinstance(function, dict):
            raise _invalid(f"{where}.function", "must be an object")
        name = _name(f"{where}.function.name", function.get("name"), 64)
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            raise _invalid(f"{where}.function.arguments", "must be a string (JSON text)")
        calls.append({"id": call_id, "type": "function",
                      "function": {"name": name, "arguments": arguments}})
    return calls


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


# orjson writes at most 255 levels: deeper metadata would be a 500 when stored.
MAX_METADATA_DEPTH = 64


def _metadata(value: Any, max_bytes: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid("metadata", "must be an object")
    _check_tree(value)
    if len(orjson.dumps(value)) > max_bytes:
        raise _invalid("metadata", f"larger than {max_bytes} bytes as JSON")
    return value


def _check_tree(metadata: dict[str, Any]) -> None:
    """Metadata nests at most ``MAX_METADATA_DEPTH`` deep, and each of its numbers lies within
    64-bit integers' range, as the OpenAPI document says. (A wider integer read as a float by
    orjson is caught here, or, where rounding brings it back in range, by ``bodies.loads``.)
    Iterative: what arrives may nest 1,000 deep."""
    stack: list[tuple[Any, int, str]] = [(metadata, 1, "metadata")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict | list):
            if depth > MAX_METADATA_DEPTH:
                raise _invalid("metadata", f"nested deeper than {MAX_METADATA_DEPTH} levels")
            items = (node.items() if isinstance(node, dict)
                     else ((f"[{i}]", v) for i, v in enumerate(node)))
            for key, item in items:
                where = f"{path}{key}" if isinstance(node, list) else f"{path}.{key}"
                stack.append((item, depth + 1, where))
        elif isinstance(node, float) and not INT_MIN <= node <= INT_MAX:
            raise _invalid(path, f"a number beyond 64-bit integers' range ({INT_MIN} to "
                                 f"{INT_MAX})")

"""Turning a request body into a task request, or a clear 4xx naming what is wrong.

Forward by default: what reaches the provider is the client's body, less only what Sluice owns
(:data:`OWNED`; ``metadata`` unless AI_FORWARD_METADATA), with ``model`` filled in, every other
member passed through unchanged and in its own name (the processor builds the provider's body:
``services.processor.provider.request_body``). Sluice checks only what it must understand to do
its job: the model, the messages (to count, limit and store them), the token bounds, ``n``,
``stream``/``stream_options``, ``service_tier``, its own fields, and ``temperature``, ``top_p``
and ``stop`` as OpenAI bounds them.

``POST /api/tasks`` accepts every documented Chat Completions field (:data:`CHAT_FIELDS`) and
Sluice's own; any other top-level member is a 422 (a typo never silently changes what is sent),
except inside ``provider_options``, an object merged into the provider's request for a
provider's extras. ``/v1/chat/completions`` (and Batch API lines) pass unknown members through,
as the SDKs' ``extra_body`` sends them.
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

ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
# OpenAI's documented request body of POST /v1/chat/completions.
CHAT_FIELDS = frozenset({
    "messages", "model", "audio", "frequency_penalty", "function_call", "functions",
    "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities",
    "n", "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key",
    "prompt_cache_retention", "reasoning_effort", "response_format", "safety_identifier",
    "seed", "service_tier", "stop", "store", "stream", "stream_options", "temperature",
    "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity",
    "web_search_options"})
# Sluice's own members; the processor keeps them (and ``metadata``, unless forwarded) to itself.
SLUICE_FIELDS = frozenset({"prompt", "deadline", "priority", "provider_options"})
TASK_FIELDS = CHAT_FIELDS | SLUICE_FIELDS
# What provider_options may not set: what Sluice decides for every call.
PROVIDER_OPTIONS_RESERVED = frozenset({"model", "messages", "stream", "stream_options"})
MAX_N = 128
# ``priority``: lower runs sooner (vLLM's and LiteLLM's convention), 0 by default; each step is
# worth PRIORITY_AGING_S of waiting, so a low priority delays a task but never starves it.
PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
FLEX_PRIORITY = 10  # /v1's service_tier "flex": cheaper, slower, later
PRIORITY_HEADER = "X-Sluice-Priority"  # /v1: for clients that cannot add a body field
PRIORITY_HEADER_PATTERN = "^ *-?(1000|[0-9]{1,3}) *$"  # the same in the OpenAPI document
PRIORITY_HEADER_VALUE = re.compile(PRIORITY_HEADER_PATTERN)


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """What the task stores as its request (``payload``: the client's body with ``model``
    filled in, ``prompt`` turned into ``messages`` and the priority a header or service tier
    gave), the model it names, its explicit deadline (epoch ms), and how /v1 answers it."""

    payload: dict[str, Any]
    model: str
    deadline_at: int | None = None
    priority: int = 0
    stream: bool = False
    include_usage: bool = False


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", f"{field}: {message}", param=field)


def parse_task(body: Any, settings: EdgeSettings, *, openai: bool = False,
               priority_header: str | None = None) -> TaskRequest:
    """The task ``body`` asks for. ``body`` becomes the stored request (it is the caller's
    parsed JSON, used in place: no copy on the submit path)."""
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    if not openai:
        unknown = [f for f in body if f not in TASK_FIELDS]
        if unknown:
            raise _invalid(sorted(unknown)[0], "unknown field (a provider's own parameter "
                           "goes in provider_options)")
    _messages(body, settings, openai)
    model = body["model"] = _model(body.get("model"), settings, openai)
    for field in ("max_completion_tokens", "max_tokens"):
        if body.get(field) is not None:
            _int(field, body[field], 1, settings.max_tokens_limit)
    for name, hi in (("temperature", 2.0), ("top_p", 1.0)):
        if body.get(name) is not None:
            _number(name, body[name], 0.0, hi)
    if body.get("stop") is not None:
        _stop(body["stop"])
    if body.get("n") is not None:
        _int("n", body["n"], 1, MAX_N)
    if body.get("metadata") is not None:
        _metadata(body["metadata"], settings.max_metadata_bytes)
    if body.get("provider_options") is not None:
        _provider_options(body["provider_options"])
    stream, include_usage = _stream_options(body)
    deadline_at = None
    if body.get("deadline") is not None:
        try:
            deadline_at = deadlines.parse(body["deadline"], now_ms())
        except deadlines.DeadlineError as exc:
            raise _invalid("deadline", str(exc)) from None
        # Kept as given (seconds count from the submit time the task hash records), so an
        # idempotent replay of the same body hashes the same.
    priority = _priority(body, openai, priority_header)
    if priority is not None:
        body["priority"] = priority  # ours, like deadline: the processor keeps it to itself
    return TaskRequest(payload=body, model=model, deadline_at=deadline_at,
                       priority=priority or 0, stream=stream, include_usage=include_usage)


def _stream_options(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("stream", "must be a boolean")
    options = body.get("stream_options")
    if options is None:
        return bool(stream), False
    if not isinstance(options, dict):
        raise _invalid("stream_options", "must be an object")
    include_usage = options.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise _invalid("stream_options.include_usage", "must be a boolean")
    return bool(stream), bool(include_usage)


def _provider_options(value: Any) -> None:
    if not isinstance(value, dict):
        raise _invalid("provider_options", "must be an object")
    reserved = sorted(PROVIDER_OPTIONS_RESERVED.intersection(value))
    if reserved:
        raise _invalid(f"provider_options.{reserved[0]}", "is Sluice's to set, not an option")


def _priority(body: dict[str, Any], openai: bool, header: str | None) -> int | None:
    """The body's ``priority``; on /v1 failing that the priority header, then
    ``service_tier: "flex"`` (a low priority). None: not asked for."""
    # A bad header is refused even when the body's field wins: nothing malformed is ignored.
    if openai and header is not None and not PRIORITY_HEADER_VALUE.match(header.strip()):
        raise ApiError(422, "invalid_request", f"{PRIORITY_HEADER}: must be an integer "
                       f"from {PRIORITY_MIN} to {PRIORITY_MAX}", param=PRIORITY_HEADER)
    tier = body.get("service_tier")
    if tier is not None and not isinstance(tier, str):
        raise _invalid("service_tier", "must be a string")
    if body.get("priority") is not None:
        return _int("priority", body["priority"], PRIORITY_MIN, PRIORITY_MAX)
    if not openai:
        return None
    if header is not None:
        return int(header)
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


def _messages(body: dict[str, Any], settings: EdgeSettings, openai: bool) -> None:
    """Checks ``messages`` (or turns /api/tasks' ``prompt`` into them) in place. Messages are
    kept as given, every member of them; what is checked is what Sluice relies on (roles,
    the shape of tool calls, content a string, null or parts) and the limits: how many, and
    their characters in all (every string in a message counts: an image's data too)."""
    if "messages" not in body:
        prompt = None if openai else body.get("prompt")
        if prompt is None:
            raise _invalid("messages", "required" + ("" if openai else " (or give a prompt)"))
        if not isinstance(prompt, str) or not prompt:
            raise _invalid("prompt", "must be a non-empty string")
        if len(prompt) > settings.max_text_chars:
            raise _invalid("prompt", f"longer than {settings.max_text_chars} characters")
        body["messages"] = [{"role": "user", "content": body.pop("prompt")}]
        return
    if "prompt" in body and not openai:
        raise _invalid("prompt", "give either messages or prompt, not both")
    raw = body["messages"]
    if not isinstance(raw, list) or not raw:
        raise _invalid("messages", "must be a non-empty array")
    if len(raw) > settings.max_messages:
        raise _invalid("messages", f"at most {settings.max_messages} messages")
    total = 0
    for i, msg in enumerate(raw):
        if type(msg) is dict and len(msg) == 2 and type(msg.get("content")) is str:
            # The common message, {"role", "content": "..."}: checked inline.
            if msg.get("role") not in ROLES or msg["role"] == "tool":
                _message(f"messages[{i}]", msg)
            total += len(msg["content"])
        else:
            total += _message(f"messages[{i}]", msg)
        if total > settings.max_text_chars:
            raise _invalid("messages", f"more than {settings.max_text_chars} characters in all")


def _message(where: str, msg: Any) -> int:
    """Checks one message; its characters (every string in it, but the role)."""
    if not isinstance(msg, dict):
        raise _invalid(where, "must be an object")
    role = msg.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise _invalid(f"{where}.role", f"must be one of {', '.join(sorted(ROLES))}")
    content = msg.get("content")
    calls = msg.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            raise _invalid(f"{where}.tool_calls", "only an assistant message has tool_calls")
        _tool_calls(f"{where}.tool_calls", calls)
    if content is None:
        if role != "assistant" or not any(msg.get(k) is not None for k in (
                "tool_calls", "function_call", "refusal", "audio")):
            raise _invalid(f"{where}.content", "must be a string or an array of parts (null "
                           "only in an assistant message with tool_calls)")
    elif isinstance(content, list):
        _parts(f"{where}.content", content)
    elif not isinstance(content, str):
        raise _invalid(f"{where}.content", "must be a string or an array of parts")
    tool_call_id = msg.get("tool_call_id")
    if role == "tool":  # the provider needs it to match the answer to its call
        _name(f"{where}.tool_call_id", tool_call_id, MAX_ID_CHARS)
    elif tool_call_id is not None:
        raise _invalid(f"{where}.tool_call_id", "only a tool message has tool_call_id")
    if msg.get("name") is not None:
        _name(f"{where}.name", msg["name"], 64)
    return _chars(msg) - len(role)


def _parts(field: str, content: list[Any]) -> None:
    """Content parts of any type (text, image_url, input_audio, file, ...), forwarded as
    given: each must be an object naming its type."""
    if not content:
        raise _invalid(field, "must be a string or a non-empty array of parts")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _invalid(f"{field}[{j}]", "must be an object with a string type")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise _invalid(f"{field}[{j}].text", "must be a string")


def _chars(value: Any) -> int:
    """Characters of every string in ``value`` (keys too), iteratively: it may nest deep."""
    total, stack = 0, [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            total += len(node)
        elif isinstance(node, dict):
            total += sum(len(k) for k in node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return total


MAX_TOOL_CALLS = 128
MAX_ID_CHARS = 256


def _name(field: str, value: Any, most: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= most:
        raise _invalid(field, f"must be a string of 1 to {most} characters")
    return value


def _tool_calls(field: str, value: Any) -> None:
    """An assistant's tool calls in OpenAI's shape (``function``, or ``custom`` tools); kept
    as given, every member."""
    if not isinstance(value, list) or not 0 < len(value) <= MAX_TOOL_CALLS:
        raise _invalid(field, f"must be an array of 1 to {MAX_TOOL_CALLS} tool calls")
    for k, call in enumerate(value):
        where = f"{field}[{k}]"
        if not isinstance(call, dict):
            raise _invalid(where, "must be an object")
        _name(f"{where}.id", call.get("id"), MAX_ID_CHARS)
        kind = call.get("type")
        if kind == "custom":
            continue
        if kind != "function":
            raise _invalid(f"{where}.type", "must be \"function\" or \"custom\"")
        function = call.get("function")
        if not isinstance(function, dict):
            raise _invalid(f"{where}.function", "must be an object")
        _name(f"{where}.function.name", function.get("name"), 64)
        if not isinstance(function.get("arguments"), str):
            raise _invalid(f"{where}.function.arguments", "must be a string (JSON text)")


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

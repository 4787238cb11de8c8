"""OpenAI wire format: request parsing, error envelopes and pre-serialized SSE chunks.

Chunks are built from byte templates rather than by dumping a dict per token: the mock
has to push hundreds of streams per second on one core, and per-token dict
serialization would dominate its CPU time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from .settings import MAX_TOKENS_PER_PART
from .text import ALL_CONTENT_TOKENS, ALL_REASONING_TOKENS, Prompt, PromptError, digest_prompt


class RequestError(ValueError):
    """A 400-worthy problem with the request; `code` goes into the error envelope."""

    def __init__(self, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.code = code


def error_body(
    message: str,
    error_type: str = "invalid_request_error",
    code: str | int | None = None,
) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    )


# Default `type`/`code` for injected status faults, close to what real providers send.
_STATUS_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", "model_not_found"),
    408: ("timeout_error", None),
    409: ("conflict_error", None),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    529: ("overloaded_error", "overloaded"),
}


def status_error_defaults(status: int) -> tuple[str, str | None]:
    if status in _STATUS_TYPES:
        return _STATUS_TYPES[status]
    return ("server_error", None) if status >= 500 else ("invalid_request_error", None)


# --- request ---------------------------------------------------------------------------

_MOCK_KEYS = frozenset(
    {"ttft_ms", "tokens_per_s", "content_tokens", "reasoning_tokens", "fault", "tag", "vary",
     "keepalive_s", "record", "tool_arguments", "tool_calls", "split", "refusal", "usage",
     "reject", "replay"}
)
MAX_N = 128  # OpenAI's own bound on `n`
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class MockOptions:
    """`metadata.mock`: per-request overrides of the server settings (None = use default)."""

    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    content_tokens: int | None = None
    reasoning_tokens: int | None = None
    tag: str | None = None
    fault: object = None  # raw spec; parsed by faults.parse_fault
    # Other words on every call, as a real provider at temperature > 0 answers a retry.
    vary: bool = False
    # DeepSeek under load: the stream opens, then only `: keep-alive` comments for this long
    # before inference starts (on top of the TTFT).
    keepalive_s: float | None = None
    # Keep the whole request body in its record (GET /mock/requests shows it as `body`).
    record: bool = False
    # Tool calls (when the request offers `tools`): the arguments each call answers (JSON text),
    # how many calls one answer makes (parallel calls, one per tool in turn), and how many
    # characters of arguments go in each streamed chunk.
    tool_arguments: str | None = None
    tool_calls: int | None = None
    split: int | None = None
    refusal: str | None = None  # answer this refusal instead of content
    usage: bool = True  # False: never report usage, as llama.cpp's server does not
    # Refuse a request that carries any of these top-level fields with a 400 naming it, as a
    # provider answers a parameter it does not support.
    reject: tuple[str, ...] = ()
    # A file of MOCKAI_REPLAY_DIR (a captured provider stream, e.g. the SSE corpus) answered
    # byte for byte instead of a made-up answer.
    replay: str | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str | None
    prompt: Prompt
    stream: bool
    include_usage: bool
    max_tokens: int | None
    mock: MockOptions
    body: dict[str, Any]  # the request as received (kept in the record when asked)
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    # The tool names the model may call now ([] when it must answer in text): `tools`,
    # narrowed by `tool_choice`, and none once the last message is a tool's result.
    tools: tuple[str, ...] = ()

    @property
    def rich(self) -> bool:
        """Anything but one plain choice: answered by services.mockai.rich."""
        mock = self.mock
        return bool(self.n > 1 or self.logprobs or self.tools or mock.refusal is not None
                    or not mock.usage)


def _nonneg_number(obj: dict[str, Any], name: str) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise RequestError(f"metadata.mock.{name} must be a non-negative number")
    return float(value)


def _token_count(obj: dict[str, Any], name: str) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 0 <= value <= MAX_TOKENS_PER_PART
    ):
        raise RequestError(f"metadata.mock.{name} must be an integer in 0..{MAX_TOKENS_PER_PART}")
    return value


def _parse_mock(metadata: object) -> MockOptions:
    # `metadata` belongs to the caller; only its `mock` member is ours to interpret.
    if not isinstance(metadata, dict) or metadata.get("mock") is None:
        return MockOptions()
    mock = metadata["mock"]
    if not isinstance(mock, dict):
        raise RequestError("metadata.mock must be an object")
    unknown = set(mock) - _MOCK_KEYS
    if unknown:
        raise RequestError(f"metadata.mock.{sorted(unknown)[0]} is not a known option")
    tag = mock.get("tag")
    if tag is not None and not isinstance(tag, str):
        raise RequestError("metadata.mock.tag must be a string")
    vary = mock.get("vary", False)
    if not isinstance(vary, bool):
        raise RequestError("metadata.mock.vary must be a boolean")
    for flag in ("record", "usage"):
        if not isinstance(mock.get(flag, True), bool):
            raise RequestError(f"metadata.mock.{flag} must be a boolean")
    for text in ("tool_arguments", "refusal", "replay"):
        if mock.get(text) is not None and not isinstance(mock[text], str):
            raise RequestError(f"metadata.mock.{text} must be a string")
    reject = mock.get("reject") or []
    if not isinstance(reject, list) or not all(isinstance(r, str) for r in reject):
        raise RequestError("metadata.mock.reject must be an array of field names")
    return MockOptions(
        ttft_ms=_nonneg_number(mock, "ttft_ms"),
        tokens_per_s=_nonneg_number(mock, "tokens_per_s"),
        content_tokens=_token_count(mock, "content_tokens"),
        reasoning_tokens=_token_count(mock, "reasoning_tokens"),
        tag=tag,
        fault=mock.get("fault"),
        vary=vary,
        keepalive_s=_nonneg_number(mock, "keepalive_s"),
        record=mock.get("record") is True,
        tool_arguments=mock.get("tool_arguments"),
        tool_calls=_count(mock, "tool_calls", 1, 16),
        split=_count(mock, "split", 1, 1 << 20),
        refusal=mock.get("refusal"),
        usage=mock.get("usage") is not False,
        reject=tuple(reject),
        replay=mock.get("replay"),
    )


def _count(obj: dict[str, Any], name: str, lo: int, hi: int, where: str = "metadata.mock."
           ) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RequestError(f"'{where}{name}' must be an integer in {lo}..{hi}")
    return value


def _tools(body: dict[str, Any]) -> tuple[str, ...]:
    """The functions the model may call in this answer, by name."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return ()
    messages = body.get("messages") or []
    if isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        return ()  # the tool answered: now the model answers the user
    names = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise RequestError(f"'tools[{i}].function.name' must be a non-empty string")
        names.append(name)
    choice = body.get("tool_choice")
    if choice == "none":
        return ()
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if name not in names:
            raise RequestError("'tool_choice.function.name' names no tool of the request")
        return (name,)
    return tuple(names)


def parse_chat_request(raw: bytes) -> ChatRequest:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RequestError("request body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object", "invalid_json")

    messages = body.get("messages")
    if messages is None:
        raise RequestError("'messages' is a required property", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty array")
    try:
        prompt = digest_prompt(messages)
    except PromptError as exc:
        raise RequestError(str(exc)) from None

    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("'model' must be a string")

    stream = body.get("stream")
    if stream is None:
        stream = False
    elif not isinstance(stream, bool):
        raise RequestError("'stream' must be a boolean")

    include_usage = False
    options = body.get("stream_options")
    if isinstance(options, dict):
        include_usage = options.get("include_usage") is True

    # Newer clients send max_completion_tokens instead of max_tokens; honour either.
    max_tokens = body.get("max_completion_tokens")
    name = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, name = body.get("max_tokens"), "max_tokens"
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise RequestError(f"'{name}' must be a positive integer")

    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise RequestError("'logprobs' must be a boolean")
    return ChatRequest(
        model=model or None,
        prompt=prompt,
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        mock=_parse_mock(body.get("metadata")),
        body=body,
        n=_count(body, "n", 1, MAX_N, "") or 1,
        logprobs=bool(logprobs),
        top_logprobs=_count(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, "") or 0,
        tools=_tools(body),
    )


# --- responses -------------------------------------------------------------------------


def usage(prompt_tokens: int, reasoning: int, content: int) -> dict[str, Any]:
    completion = reasoning + content
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def completion_body(
    cid: str,
    created: int,
    model: str,
    content: str,
    reasoning: str | None,
    finish_reason: str,
    usage_obj: dict[str, Any],
) -> bytes:
    return orjson.dumps(
        {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": content,
                        "reasoning_content": reasoning,
                    },
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage_obj,
        }
    )


def _content_delta(tok: str) -> bytes:
    return b'{"content":' + orjson.dumps(tok) + b',"reasoning_content":null}'


def _reasoning_delta(tok: str) -> bytes:
    return b'{"reasoning_content":' + orjson.dumps(tok) + b',"content":null}'


# Every token the vocabulary can produce, serialized once at import.
_CONTENT_DELTAS: dict[str, bytes] = {t: _content_delta(t) for t in ALL_CONTENT_TOKENS}
_REASONING_DELTAS: dict[str, bytes] = {t: _reasoning_delta(t) for t in ALL_REASONING_TOKENS}
_ROLE_DELTA = b'{"role":"assistant","content":null,"reasoning_content":""}'
_OPEN_TAIL = b',"finish_reason":null}]}\n\n'
DONE = b"data: [DONE]\n\n"


class ChunkEncoder:
    """SSE `chat.completion.chunk` events for one completion, from byte templates."""

    __slots__ = ("_base", "_head")

    def __init__(self, cid: str, created: int, model: str) -> None:
        # `data: {"id":..,"object":..,"created":..,"model":..,` shared by every event.
        self._base = (
            b'data: {"id":'
            + orjson.dumps(cid)
            + b',"object":"chat.completion.chunk","created":'
            + str(created).encode()
            + b',"model":'
            + orjson.dumps(model)
            + b","
        )
        self._head = self._base + b'"choices":[{"index":0,"delta":'

    def role(self) -> bytes:
        return self._head + _ROLE_DELTA + _OPEN_TAIL

    def content(self, tok: str) -> bytes:
        delta = _CONTENT_DELTAS.get(tok) or _content_delta(tok)
        return self._head + delta + _OPEN_TAIL

    def reasoning(self, tok: str) -> bytes:
        delta = _REASONING_DELTAS.get(tok) or _reasoning_delta(tok)
        return self._head + delta + _OPEN_TAIL

    def finish(self, finish_reason: str, usage_obj: dict[str, Any]) -> bytes:
        # DeepSeek puts usage on the finish chunk itself.
        return (
            self._head
            + b'{"content":""},"finish_reason":'
            + orjson.dumps(finish_reason)
            + b'}],"usage":'
            + orjson.dumps(usage_obj)
            + b"}\n\n"
        )

    def usage(self, usage_obj: dict[str, Any]) -> bytes:
        # OpenAI's stream_options.include_usage trailer: no choices, just usage.
        return self._base + b'"choices":[],"usage":' + orjson.dumps(usage_obj) + b"}\n\n"


def stream_error_event(message: str) -> bytes:
    return (
        b"data: "
        + orjson.dumps({"error": {"message": message, "type": "server_error", "code": 500}})
        + b"\n\n"
    )

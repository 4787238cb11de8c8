"""Turn OpenAI-compatible chat completion payloads into a result, live deltas and typed errors.

Pure logic, no I/O. :class:`StreamAssembler` consumes the events of
:class:`services.processor.sse.SSEDecoder` (``chat.completion.chunk`` payloads),
:func:`assemble_completion` reads a non-streaming ``chat.completion`` body and
:func:`parse_error_body` classifies an error response.

Provider quirks handled here come from real captures (``tests/fixtures/sse-corpus``, replayed
by ``tests/unit/test_sse_corpus.py``): choices keyed
by ``index`` and interleaved (n>1), usage on the finish chunk, on a ``choices: []`` chunk or
cumulative on every chunk, tool-call fragments that repeat the id with an empty name, a usage
chunk with an empty delta after the finish chunk, reasoning in ``reasoning_content`` or
``reasoning``, and error envelopes of two shapes.

Nothing a provider sends is trusted to be an answer: a 200 whose choice 0 carries neither text
nor a finish_reason (``{}``, a proxy's ``{"status": "ok"}``, a stream of only ``[DONE]`` or of
unparseable events) raises ``empty_answer`` / ``invalid_answer``; an error inside a 200, in any
of the shapes servers use (``data: {"error": ...}``, ``event: error``, vLLM's
``"object": "error"``, a non-standard ``error:`` field, an error merged with ``[DONE]`` in one
event), raises with the provider's message. Numbers and labels bound for the store are clamped
here (:data:`MAX_TOKEN_COUNT`, :data:`MAX_FINISH_REASON_CHARS`): one absurd value must not be
able to fail the store write.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import orjson

from services.processor.sse import SSEEvent

__all__ = [
    "LEAF",
    "MAX_FINISH_REASON_CHARS",
    "MAX_TOKEN_COUNT",
    "NO_STATUS",
    "ChoiceResult",
    "ChoiceText",
    "Delta",
    "ProviderError",
    "StreamAssembler",
    "Text",
    "ToolCall",
    "Usage",
    "assemble_answer",
    "assemble_completion",
    "parse_error_body",
    "parse_retry_after",
]

# Statuses worth retrying: timeouts, conflicts, rate limits and server-side failures
# (529 = "overloaded", used by some providers). Other 4xx need a changed request or account.
_RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
# Error types that say "your request/account is wrong": retrying the same request cannot help.
_FATAL_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "permission_denied",
        "not_found_error",
        "insufficient_quota",
        "billing_error",
        "context_length_exceeded",
        "invalid_api_key",
        "model_not_found",
    }
)
_MAX_BODY_MESSAGE = 500  # non-JSON bodies (HTML error pages...) are cut to this
_MAX_JSON_MESSAGE = 2000  # provider messages are kept whole unless absurdly long
_MAX_LABEL_CHARS = 200  # error code and type: labels, not prose
_BOM = b"\xef\xbb\xbf"
# Token counts are clamped to 0..2^31-1: far above any real request, inside every integer type
# on the way (SQLite's int64, a JavaScript number, a 32-bit client). 2^63 in prompt_tokens once
# made the store write raise OverflowError.
MAX_TOKEN_COUNT = 2**31 - 1
# Real finish reasons are short words ("insufficient_system_resource" is the longest seen).
MAX_FINISH_REASON_CHARS = 64
# The status given to a failed answer when the provider gave no HTTP-like number: "the upstream
# answered, but not with an answer" is what 502 Bad Gateway means.
NO_STATUS = 502
# How servers word "the prompt does not fit": OpenAI/DeepSeek/vLLM ("maximum context length"),
# OpenAI's code "context_length_exceeded", llama.cpp ("exceeds the available context size"),
# Anthropic ("prompt is too long"). Retrying the same prompt cannot help.
_CONTEXT_LENGTH = re.compile(
    r"context[ _-]?(?:length|window|size)|maximum context|prompt is too long", re.IGNORECASE
)

# A stream's text arrives a token at a time, and each token is a string object of its own
# (~56 bytes for 4 characters): see :class:`Text` for how an answer in flight holds its text, not
# one object per token.
LEAF = 8

DeltaKind = Literal["reasoning", "content", "refusal", "choice"]


# --- public types ------------------------------------------------------------------------------
@dataclass(slots=True)
class ToolCall:
    id: str | None
    type: str | None
    name: str
    arguments: str  # concatenated fragments; valid JSON only once the call is complete


@dataclass(slots=True)
class ChoiceResult:
    index: int
    content: str = ""
    reasoning: str = ""
    refusal: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None  # passed through as sent, unknown values included
    # {"content": [...], "refusal": [...]} as the provider sent them, the lists of every chunk
    # joined; None when it sent none.
    logprobs: dict[str, Any] | None = None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # The raw usage object, for provider-specific counters (completion_tokens_details,
    # prompt_cache_hit_tokens, ...).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Delta:
    """A piece of the answer to forward live, never empty: choice 0's text by kind, or
    (``choice``) the JSON text of one relayed choice delta, ``{"index", "delta",
    "logprobs"}``, for whatever else the provider streams: tool calls (each call's ``id``,
    ``type`` and ``name`` once, then pieces of its ``arguments``), logprobs, and every other
    choice's text when ``n`` > 1."""

    kind: DeltaKind
    text: str


class ProviderError(Exception):
    """An error reported by the provider, as an HTTP error body or mid-stream."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        type: str | None = None,
        retryable: bool = True,
        retry_after: float | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type
        self.param = param  # the request field the provider named (OpenAI's error.param)
        self.retryable = retryable
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "mid-stream"
        return f"provider error ({where}): {self.message}"

    def __repr__(self) -> str:
        return (
            f"ProviderError(status={self.status!r}, message={self.message!r}, code={self.code!r}, "
            f"type={self.type!r}, retryable={self.retryable!r}, retry_after={self.retry_after!r})"
        )


# --- streaming ---------------------------------------------------------------------------------
class _ToolState:
    __slots__ = ("args", "id", "name", "type")

    def __init__(self) -> None:
        self.id: str | None = None
        self.type: str | None = None
        self.name = ""
        self.args = Text()

    def fragment(self, index: int, known: tuple[str | None, str | None, str], args: str
                 ) -> dict[str, Any] | None:
        """The fragment to relay for what just arrived: the id, type and name each once (the
        first time they are known: a client joins fragments by concatenating them, so a
        repeated id would double), and this piece of the arguments."""
        out: dict[str, Any] = {"index": index}
        if self.id is not None and known[0] is None:
            out["id"] = self.id
        if self.type is not None and known[1] is None:
            out["type"] = self.type
        function: dict[str, str] = {}
        if self.name and not known[2]:
            function["name"] = self.name
        if args or function:
            function["arguments"] = args
        if function:
            out["function"] = function
        return out if len(out) > 1 else None


class ChoiceText:
    """A choice's text by kind, as it streams in. Whoever relays a stream may hand its own to
    the assembler for choice 0 (``StreamAssembler(answer)``): the answer in flight is then held
    once, not once by the assembler and again by the relay."""

    __slots__ = ("content", "reasoning", "refusal")

    def __init__(self) -> None:
        self.content = Text()
        self.reasoning = Text()
        self.refusal = Text()


class _ChoiceState:
    """Text kept as lists of fragments: ``str +=`` on attributes is quadratic in CPython."""

    __slots__ = ("content", "finish_reason", "logprobs", "reasoning", "refusal", "tools")

    def __init__(self, text: ChoiceText) -> None:
        self.content = text.content
        self.reasoning = text.reasoning
        self.refusal = text.refusal
        self.tools: dict[int, _ToolState] = {}
        self.finish_reason: str | None = None
        self.logprobs: dict[str, list[Any]] | None = None

    def add_logprobs(self, logprobs: dict[str, Any]) -> bool:
        """Joins a chunk's logprobs (lists by kind); whether it carried any."""
        carried = False
        for kind, items in logprobs.items():
            if isinstance(items, list) and items:
                if self.logprobs is None:
                    self.logprobs = {}
                self.logprobs.setdefault(kind, []).extend(items)
                carried = True
        return carried

    def snapshot(self, index: int) -> ChoiceResult:
        return ChoiceResult(
            index=index,
            content=self.content.value(),
            reasoning=self.reasoning.value(),
            refusal=self.refusal.value(),
            tool_calls=[
                ToolCall(id=t.id, type=t.type, name=t.name, arguments=t.args.value())
                for _, t in sorted(self.tools.items())
            ],
            finish_reason=self.finish_reason,
            logprobs=self.logprobs,
        )


class StreamAssembler:
    """Accumulates ``chat.completion.chunk`` events; see the module docstring for the quirks.

    Attributes: ``done`` ("[DONE]" seen), ``finished`` (choice 0 got a finish_reason),
    ``usage`` (last non-null usage object), ``model`` (first model name seen), ``bad_events``
    (events whose data was not a JSON object: skipped, never fatal), ``chunks`` (JSON
    payloads processed).
    """

    __slots__ = ("_answer", "_choices", "_first", "bad_events", "chunks", "done", "finished",
                 "model", "system_fingerprint", "usage")

    def __init__(self, answer: ChoiceText | None = None) -> None:
        self._answer = answer  # where choice 0's text goes (see ChoiceText); else a new one
        self._first: str | None = None  # the first event's data, quoted when it was no answer
        self.done = False
        self.finished = False
        self.usage: Usage | None = None
        self.model: str | None = None
        self.system_fingerprint: str | None = None
        self.bad_events = 0
        self.chunks = 0
        self._choices: dict[int, _ChoiceState] = {}

    @property
    def choice_count(self) -> int:
        return len(self._choices)

    @property
    def choices(self) -> dict[int, ChoiceResult]:
        """A snapshot of every choice seen, keyed by the provider's ``index``."""
        return {i: c.snapshot(i) for i, c in sorted(self._choices.items())}

    def result(self) -> ChoiceResult:
        """Choice 0 (the one a client asked for with n=1), or an empty one if none arrived."""
        state = self._choices.get(0)
        return state.snapshot(0) if state is not None else ChoiceResult(index=0)

    def final(self) -> ChoiceResult:
        """Choice 0 once the stream has ended; :class:`ProviderError` if it is no answer.

        ``invalid_answer`` when no event could be read at all, ``empty_answer`` when events were
        read but choice 0 got neither text nor a finish_reason (only ``[DONE]``, a health page,
        a role or usage chunk alone).
        """
        state = self._choices.get(0)
        if state is not None:
            result = state.snapshot(0)
            if _is_answer(result):
                return result
        seen = _snippet(self._first.encode()) if self._first is not None else "only [DONE]"
        if self.chunks == 0 and self.bad_events:
            raise _non_answer("invalid_answer", f"no event could be parsed, first: {seen}")
        raise _non_answer("empty_answer", f"first event: {seen}")

    def add_event(self, ev: SSEEvent) -> list[Delta]:
        """Apply one SSE event; return the text deltas of choice 0 it carried.

        Raises :class:`ProviderError` for an error in any shape: a payload with a top-level
        ``error`` or ``"object": "error"``, an ``event: error`` event, an ``error:`` field, or
        such a payload merged with ``[DONE]`` or another chunk into one event.
        """
        data = ev.data
        if self.done:
            return []  # nothing after [DONE] belongs to this completion
        if ev.error is not None:
            raise _field_error(ev.error)
        if data == "[DONE]" or (len(data) < 16 and data.strip() == "[DONE]"):
            self.done = True
            return []
        if self._first is None:
            self._first = data
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self._salvage(ev)
        if not isinstance(payload, dict):
            if ev.event == "error":
                raise _text_error(data)
            self.bad_events += 1
            return []
        return self._apply_payload(payload, ev.event)

    def add_data(self, data: bytes) -> list[Delta]:
        """:meth:`add_event` for a plain event (type "message", no ``error`` field) given as its
        data's raw bytes (``SSEDecoder.feed_data``): parsed from the bytes, no string or event
        object first. Anything short or unparseable goes through add_event, decoded as the
        strict path decodes it (invalid UTF-8 as U+FFFD), so the outcome is the same."""
        if self.done:
            return []
        if len(data) < 16:  # [DONE] (maybe with spaces), or no chunk anyway
            return self.add_event(SSEEvent(data.decode("utf-8", "replace")))
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self.add_event(SSEEvent(data.decode("utf-8", "replace")))
        if self._first is None:
            self._first = data.decode("utf-8", "replace")
        if not isinstance(payload, dict):
            self.bad_events += 1
            return []
        return self._apply_payload(payload, "message")

    def _apply_payload(self, payload: dict[str, Any], event_type: str) -> list[Delta]:
        self.chunks += 1
        error = payload.get("error")
        if error is not None or event_type == "error" or payload.get("object") == "error":
            raise _stream_error(payload if error is None else error, payload)
        return self._apply_chunk(payload)

    def _salvage(self, ev: SSEEvent) -> list[Delta]:
        """An event whose data is not one JSON value (the slow path, so it may split lines).

        A server that forgets the blank line merges events: an error with ``[DONE]`` (seen),
        a chunk with ``[DONE]``, or two chunks (corpus file 09). An error anywhere fails the
        answer; chunks merged with ``[DONE]`` are applied; anything else is skipped and counted,
        as a strict parser must (file 09's merged pair stays one bad event).
        """
        text = ev.data.rstrip()
        merged_done = text.endswith("[DONE]")
        if merged_done:
            text = text[: -len("[DONE]")]
        payloads = [_loads_dict(line) for line in text.split("\n") if line.strip()]
        for payload in payloads:
            if payload is not None and (payload.get("error") is not None
                                        or payload.get("object") == "error"):
                self.chunks += 1
                raise _stream_error(payload.get("error") or payload, payload)
        if ev.event == "error":
            raise _text_error(ev.data)
        chunks = [p for p in payloads if p is not None]
        if merged_done and len(chunks) == len(payloads):
            deltas = [d for p in chunks for d in self._apply_payload(p, ev.event)]
            self.done = True
            return deltas
        self.bad_events += 1
        return []

    def _apply_chunk(self, payload: dict[str, Any]) -> list[Delta]:
        if self.model is None:
            model = payload.get("model")
            if isinstance(model, str) and model:
                self.model = model
            fingerprint = payload.get("system_fingerprint")
            if isinstance(fingerprint, str) and fingerprint:
                self.system_fingerprint = fingerprint
        usage = payload.get("usage")
        if isinstance(usage, dict):
            # Last one wins: some servers repeat cumulative totals on every chunk.
            self.usage = _parse_usage(usage)
        choices = payload.get("choices")
        if not isinstance(choices, list):
            return []  # a usage-only chunk may omit choices altogether
        deltas: list[Delta] = []
        for position, choice in enumerate(choices):
            if isinstance(choice, dict):
                index = choice.get("index")
                if type(index) is not int:  # bool is an int but no index; rare: keep it apart
                    index = _as_index(index, position)
                self._apply_choice(index, choice, deltas)
        return deltas

    def _apply_choice(self, index: int, choice: dict[str, Any], deltas: list[Delta]) -> None:
        # The hot loop of every stream (once per chunk): the common fields are read inline,
        # the rare ones (refusal, tool calls) only when present.
        state = self._choices.get(index)
        if state is None:
            given = self._answer if index == 0 else None
            state = self._choices[index] = _ChoiceState(given or ChoiceText())
        delta = choice.get("delta")
        relay: dict[str, Any] | None = None  # what goes as a "choice" delta, if anything
        if isinstance(delta, dict) and delta:
            if index == 0:
                if len(delta) > 1 or "content" not in delta:
                    _append(state.reasoning, _reasoning_of(delta), "reasoning", deltas)
                _append(state.content, delta.get("content"), "content", deltas)
                if "refusal" in delta:
                    _append(state.refusal, delta["refusal"], "refusal", deltas)
            else:  # other choices' text is relayed in their own choice deltas
                relay = _other_text(state, delta)
            tool_calls = delta.get("tool_calls")
            if isinstance(tool_calls, list):
                fragments = []
                for position, fragment in enumerate(tool_calls):
                    if isinstance(fragment, dict):
                        out = _apply_tool_fragment(state.tools, fragment, position)
                        if out is not None:
                            fragments.append(out)
                if fragments:
                    relay = relay if relay is not None else {}
                    relay["tool_calls"] = fragments
        logprobs = choice.get("logprobs")
        if logprobs is not None and isinstance(logprobs, dict) and state.add_logprobs(logprobs):
            deltas.append(Delta("choice", orjson.dumps(
                {"index": index, "delta": relay or {}, "logprobs": logprobs}).decode()))
        elif relay:
            deltas.append(Delta("choice", orjson.dumps(
                {"index": index, "delta": relay, "logprobs": None}).decode()))
        finish = choice.get("finish_reason")
        # Only a real value sets it: a later chunk without one (e.g. a relay's usage chunk with
        # an empty delta) must not clear it.
        if isinstance(finish, str) and finish:
            state.finish_reason = finish[:MAX_FINISH_REASON_CHARS]
            if index == 0:
                self.finished = True


def _other_text(state: _ChoiceState, delta: dict[str, Any]) -> dict[str, Any]:
    """A choice but the first: its text joined, and the part of ``delta`` to relay."""
    relay: dict[str, Any] = {}
    role = delta.get("role")
    if isinstance(role, str) and role:
        relay["role"] = role
    for parts, text, name in ((state.reasoning, _reasoning_of(delta), "reasoning_content"),
                              (state.content, delta.get("content"), "content"),
                              (state.refusal, delta.get("refusal"), "refusal")):
        if isinstance(text, str) and text:
            parts.add(text)
            relay[name] = text
    return relay


def _append(parts: Text, text: object, kind: DeltaKind, live: list[Delta] | None) -> None:
    # null and "" are both common ("content": null next to reasoning, "reasoning_content": ""
    # in a role chunk) and must not produce empty deltas.
    if isinstance(text, str) and text:
        parts.add(text)
        if live is not None:
            live.append(Delta(kind, text))


class Text:
    """An append-only text that arrives in small pieces, held in few strings.

    Pieces are joined LEAF at a time into a block, and a block is merged into the one before
    it while that one is not longer (a binary counter over lengths): a text of n pieces is held
    in at most LEAF + log2(n) strings, and each character is copied about log2(n / LEAF) times.
    Joining everything every 64 pieces (what this replaced) held 32 token-sized strings (~56
    bytes each) per text on average and copied the text so far each time: quadratic in a long
    answer.
    """

    __slots__ = ("_loose", "_parts")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._loose = 0  # pieces at the end of _parts not joined into a block yet

    def __bool__(self) -> bool:
        return bool(self._parts)

    def add(self, piece: str) -> None:
        self._parts.append(piece)
        self._loose += 1
        if self._loose >= LEAF:
            self._join_loose()

    def _join_loose(self) -> None:
        parts, n = self._parts, self._loose
        block = "".join(parts[-n:])
        del parts[-n:]
        while parts and len(parts[-1]) <= len(block):
            block = parts.pop() + block
        parts.append(block)
        self._loose = 0

    def value(self) -> str:
        """The text so far, joined once and kept joined: repeated reads stay linear."""
        parts = self._parts
        if len(parts) > 1:
            parts[:] = ["".join(parts)]
            self._loose = 0
        return parts[0] if parts else ""


def _reasoning_of(obj: dict[str, Any]) -> object:
    # DeepSeek/SiliconFlow/vLLM use reasoning_content, OpenRouter and newer vLLM use reasoning.
    # Some servers send both with the same text: take one, never both.
    text = obj.get("reasoning_content")
    return text if isinstance(text, str) and text else obj.get("reasoning")


def _apply_tool_fragment(tools: dict[int, _ToolState], fragment: dict[str, Any], pos: int
                         ) -> dict[str, Any] | None:
    """Joins a fragment into its call; the fragment to relay (None: it added nothing)."""
    call_id = fragment.get("id")
    call_id = call_id if isinstance(call_id, str) and call_id else None
    index = _tool_index(tools, fragment.get("index"), call_id, pos)
    tool = tools.get(index)
    if tool is None:
        tool = tools[index] = _ToolState()
    known = (tool.id, tool.type, tool.name)
    # The first fragment names the call; later ones may repeat the id or send "name": "" (seen
    # from Hunyuan): never let them rename or reset it.
    if tool.id is None:
        tool.id = call_id
    kind = fragment.get("type")
    if tool.type is None and isinstance(kind, str) and kind:
        tool.type = kind
    function = fragment.get("function")
    if isinstance(function, dict):
        name = function.get("name")
        if not tool.name and isinstance(name, str) and name:
            tool.name = name
        args = function.get("arguments")
        if not isinstance(args, str):  # a server that sends an object instead of a JSON string
            args = "" if args is None else orjson.dumps(args).decode()
        if args:
            tool.args.add(args)
        return tool.fragment(index, known, args)
    return tool.fragment(index, known, "")


def _tool_index(tools: dict[int, _ToolState], raw: object, call_id: str | None, pos: int) -> int:
    """Which call a fragment belongs to: its ``index``, else inferred from its id."""
    same_id = None
    if call_id is not None:
        same_id = next((i for i, t in tools.items() if t.id == call_id), None)
    if isinstance(raw, int) and not isinstance(raw, bool):
        # A known id under a new index is a repeat of that call, not a second call.
        return same_id if same_id is not None and raw not in tools else raw
    # No usable index (some servers omit it): a known id continues its call, a new id opens
    # the next call, an id-less fragment continues the latest call.
    if same_id is not None:
        return same_id
    if not tools:
        return pos
    return max(tools) + 1 if call_id is not None else max(tools)


# --- non-streaming -----------------------------------------------------------------------------
def assemble_completion(body: bytes) -> tuple[dict[int, ChoiceResult], Usage | None]:
    """:func:`assemble_answer` without the system fingerprint."""
    choices, usage, _ = assemble_answer(body)
    return choices, usage


def assemble_answer(body: bytes) -> tuple[dict[int, ChoiceResult], Usage | None, str | None]:
    """Parse a non-streaming ``chat.completion`` body into choices (keyed by index) and usage.

    Leading blank lines are tolerated: DeepSeek sends empty lines as keep-alive while a
    non-streaming request waits. Raises :class:`ProviderError`: ``invalid_answer`` for a body
    that is not a JSON object, the provider's own error for one that carries ``error``, and
    ``empty_answer`` when choice 0 has neither text nor a finish_reason.
    """
    payload = _loads_object(body)
    if payload is None:
        raise _non_answer("invalid_answer", f"not a JSON object: {_snippet(body)}")
    error = payload.get("error")
    if error is not None or payload.get("object") == "error":
        raise _stream_error(payload if error is None else error, payload)
    results: dict[int, ChoiceResult] = {}
    choices = payload.get("choices")
    for position, choice in enumerate(choices if isinstance(choices, list) else []):
        if isinstance(choice, dict):
            index = _as_index(choice.get("index"), position)
            results[index] = _message_result(index, choice)
    first = results.get(0)
    if first is None or not _is_answer(first):
        raise _non_answer("empty_answer", f"body: {_snippet(body)}")
    usage = payload.get("usage")
    fingerprint = payload.get("system_fingerprint")
    return (results, _parse_usage(usage) if isinstance(usage, dict) else None,
            fingerprint if isinstance(fingerprint, str) and fingerprint else None)


def _is_answer(result: ChoiceResult) -> bool:
    # A finish_reason is the provider's word that it answered, even with no text (max_tokens=0).
    return bool(result.finish_reason or result.content or result.reasoning or result.refusal
                or result.tool_calls)


def _non_answer(code: str, detail: str) -> ProviderError:
    # Retryable: what answers 200 with no answer is usually a proxy or balancer in a bad
    # moment (a health page, an empty body); MAX_ATTEMPTS bounds the cost if it persists.
    return ProviderError(f"the provider's 200 answer carried no choice and no finish_reason "
                         f"({code}); {detail}", status=NO_STATUS, code=code, retryable=True)


def _message_result(index: int, choice: dict[str, Any]) -> ChoiceResult:
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    finish = choice.get("finish_reason")
    return ChoiceResult(
        index=index,
        content=_text_of(message.get("content")),
        reasoning=_text_of(_reasoning_of(message)),
        refusal=_text_of(message.get("refusal")),
        tool_calls=[
            _tool_call_of(t) for t in message.get("tool_calls") or [] if isinstance(t, dict)
        ],
        finish_reason=finish[:MAX_FINISH_REASON_CHARS] if isinstance(finish, str) and finish
        else None,
        logprobs=logprobs if isinstance(logprobs := choice.get("logprobs"), dict) else None,
    )


def _tool_call_of(raw: dict[str, Any]) -> ToolCall:
    function = raw.get("function")
    function = function if isinstance(function, dict) else {}
    args = function.get("arguments")
    if not isinstance(args, str):
        args = "" if args is None else orjson.dumps(args).decode()
    return ToolCall(
        id=_str_or_none(raw.get("id")),
        type=_str_or_none(raw.get("type")),
        name=_text_of(function.get("name")),
        arguments=args,
    )


def _text_of(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content given as parts: [{"type": "text", "text": ...}]
        return "".join(
            p["text"] for p in value if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


# --- errors ------------------------------------------------------------------------------------
def parse_error_body(
    status: int, body: bytes, retry_after_header: str | None = None
) -> ProviderError:
    """Classify an HTTP error response, whatever its content type.

    Accepts OpenAI-style ``{"error": {"message", "type", "code"}}`` (also ``{"error": "text"}``)
    and SiliconFlow-style ``{"code", "message", "data"}``; anything else becomes a short excerpt
    of the body.
    """
    payload = _loads_object(body)
    message, code, err_type = _error_fields(payload, body)
    error = payload.get("error") if payload is not None else None
    return ProviderError(
        message or f"HTTP {status}",
        status=status,
        code=code,
        type=err_type,
        param=_label(error.get("param")) if isinstance(error, dict) else None,
        # Nor a quota that is gone (OpenAI's insufficient_quota 429): no wait fixes it.
        retryable=(_retryable(status, err_type) and not _is_context_length(message, code)
                   and "insufficient_quota" not in (err_type, code)),
        retry_after=parse_retry_after(retry_after_header),
    )


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP date, clamped >= 0."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        return _seconds_until(value, now)
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _seconds_until(http_date: str, now: datetime | None) -> float | None:
    try:
        when = parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no zone information
        when = when.replace(tzinfo=UTC)
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return max(delta, 0.0)


def _stream_error(error: object, payload: dict[str, Any]) -> ProviderError:
    """An error inside a 200 (mid-stream or in a JSON body). Its status is the HTTP-like number
    the error carries in ``status`` or ``code`` (OpenRouter, vLLM, SGLang put one there), else
    :data:`NO_STATUS`; it is retried unless that number, the type or a context-length wording
    says retrying cannot help."""
    message, code, err_type = _error_fields({"error": error}, orjson.dumps(payload))
    status_hint = _http_status_hint(error) or _http_status_hint(payload)
    return ProviderError(
        message or "error event without a message",
        status=status_hint or NO_STATUS,
        code=code,
        type=err_type,
        retryable=_retryable(status_hint, err_type) and not _is_context_length(message, code),
    )


def _field_error(value: str) -> ProviderError:
    """A non-standard ``error:`` SSE field: JSON in either envelope, or plain text."""
    payload = _loads_dict(value)
    if payload is None:
        return _text_error(value)
    error = payload.get("error")
    return _stream_error(payload if error is None else error, payload)


def _text_error(text: str) -> ProviderError:
    message = _snippet(text.encode()) or "error event without a message"
    return ProviderError(message, status=NO_STATUS,
                         retryable=not _is_context_length(message, None))


def _is_context_length(message: str, code: str | None) -> bool:
    return code == "context_length_exceeded" or _CONTEXT_LENGTH.search(message) is not None


def _error_fields(
    payload: dict[str, Any] | None, body: bytes
) -> tuple[str, str | None, str | None]:
    """(message, code, type) from either envelope; message falls back to a body excerpt."""
    if payload is None:
        return _snippet(body), None, None
    error = payload.get("error")
    if isinstance(error, dict):
        source = error
    elif isinstance(error, str) and error:
        return _cap(error), _label(payload.get("code")), _label(payload.get("type"))
    else:
        source = payload  # SiliconFlow: {"code": 20012, "message": "...", "data": null}
    message = source.get("message") or source.get("msg") or source.get("detail")
    if message is not None and not isinstance(message, str):
        message = orjson.dumps(message).decode()  # e.g. FastAPI's list-valued "detail"
    return (
        _cap(message) if message else _snippet(body),
        _label(source.get("code")),
        _label(source.get("type")),
    )


def _retryable(status: int | None, err_type: str | None) -> bool:
    if status is None or not 400 <= status <= 599:
        # No usable status (mid-stream): the error type is the only hint; unknown means "try
        # again", since a stream that broke halfway usually worked when it started.
        return err_type not in _FATAL_ERROR_TYPES
    if status < 500:
        return status in _RETRYABLE_STATUSES
    return status != 501  # 501 Not Implemented will not change; other 5xx are transient


def _http_status_hint(error: object) -> int | None:
    if not isinstance(error, dict):
        return None
    for key in ("status", "code"):
        value = error.get(key)
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) == 3:
            value = int(value)  # "429" as a string is still a status
        if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
            return value
    return None


# --- helpers -----------------------------------------------------------------------------------
def _loads_object(body: bytes) -> dict[str, Any] | None:
    body = body.lstrip()
    if body.startswith(_BOM):
        body = body[len(_BOM) :].lstrip()
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def _loads_dict(text: str) -> dict[str, Any] | None:
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def _parse_usage(raw: dict[str, Any]) -> Usage:
    prompt = _count(raw.get("prompt_tokens", raw.get("input_tokens"))) or 0
    completion = _count(raw.get("completion_tokens", raw.get("output_tokens"))) or 0
    total = _count(raw.get("total_tokens"))
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total if total is not None else min(prompt + completion, MAX_TOKEN_COUNT),
        extra=raw,
    )


def _count(value: object) -> int | None:
    """A token count clamped to 0..MAX_TOKEN_COUNT; None for what is not a number (strings,
    booleans, null), which then counts as missing."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value)
    if isinstance(value, int):
        return min(max(value, 0), MAX_TOKEN_COUNT)
    return None


def _as_index(value: object, fallback: int) -> int:
    # Choices are keyed by their "index", not list position; position is only a fallback for
    # servers that omit it.
    return value if isinstance(value, int) and not isinstance(value, bool) else fallback


def _label(value: object) -> str | None:
    """An error code or type: a short string whatever was sent (a number, an object...)."""
    text = _str_or_none(value)
    return text if text is None or len(text) <= _MAX_LABEL_CHARS else text[:_MAX_LABEL_CHARS]


def _str_or_none(value: object) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    return value if isinstance(value, str) else str(value)


def _cap(text: str) -> str:
    return text if len(text) <= _MAX_JSON_MESSAGE else text[: _MAX_JSON_MESSAGE - 1] + "…"


def _snippet(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    return text if len(text) <= _MAX_BODY_MESSAGE else text[: _MAX_BODY_MESSAGE - 1] + "…"

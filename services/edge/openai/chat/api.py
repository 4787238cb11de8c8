"""The OpenAI-compatible front door: ``POST /v1/chat/completions`` and ``GET /v1/models``.

A completion is an ordinary task (queued, batched, stored, fetchable by id, the id in the
``X-Sluice-Task-Id`` header); this module only answers the way OpenAI does, relaying the task's
events as ``chat.completion.chunk`` events, or waiting for its end and answering one
``chat.completion``. A client that goes away does not cancel its task.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from aiohttp import web

from services.edge.context import TASK_ID_KEY, edge_of
from services.edge.plumbing.auth import tenant_of
from services.edge.plumbing.bodies import read_json
from services.edge.plumbing.errors import ApiError
from services.edge.plumbing.replies import json_response
from services.edge.tasks import service
from services.edge.tasks.events import (
    KEEPALIVE,
    client_gone,
    follow,
    follow_batches,
    sse_response,
    view_loader,
)
from services.edge.tasks.feeds import FEEDS, TERMINAL_EVENTS, Event
from services.edge.tasks.validation import PRIORITY_HEADER, parse_task
from services.edge.tasks.views import idempotency_key

EventStream = AsyncGenerator[Event | None, None]
BatchStream = AsyncGenerator[list[Event] | None, None]
TASK_HEADER = "X-Sluice-Task-Id"
# The task has run and ended (with the processor's own retries): an SDK that retried the request
# would only start the same work again. OpenAI's SDKs obey this header.
NO_RETRY = {"x-should-retry": "false"}
DELTA_FIELDS = {"content": "content", "reasoning": "reasoning_content", "refusal": "refusal"}
_UNAVAILABLE = ("unavailable", "the edge stopped following this task; its result will be "
                f"at GET /api/tasks/<the {TASK_HEADER} header>")


class Diverged(Exception):
    """A new attempt does not continue the text the client already has."""


class Relay:
    """The text of one kind (content, reasoning, refusal) already sent to the client.

    OpenAI chunks cannot be taken back, so when an attempt restarts (``reset``), the new
    attempt's text is held back while it repeats what was sent, and only what goes beyond it
    is forwarded. A real provider's retry often says something else (temperature > 0): then
    the client's text can no longer become the stored answer, and :class:`Diverged` is raised
    before a byte of the new attempt is sent, so the stream never splices two answers.
    """

    __slots__ = ("_pos", "_replaying", "sent")

    def __init__(self) -> None:
        self.sent = ""
        self._pos = 0  # how much of ``sent`` the current attempt has repeated so far
        self._replaying = False

    def reset(self) -> None:
        self._pos, self._replaying = 0, bool(self.sent)

    def feed(self, delta: str) -> str:
        """The part of ``delta`` to forward; raises Diverged if it contradicts ``sent``."""
        if self._replaying:
            ahead = self.sent[self._pos:self._pos + len(delta)]
            if not delta.startswith(ahead):
                raise Diverged
            self._pos += len(ahead)
            delta = delta[len(ahead):]
            if self._pos < len(self.sent):
                return ""
            self._replaying = False  # caught up: forward from here on
        self.sent += delta
        return delta

    def check_finished(self) -> None:
        """At the end of the answer: raises Diverged if it stopped short of ``sent``."""
        if self._replaying and self._pos < len(self.sent):
            raise Diverged


class ChoiceRelay:
    """The choice deltas (tool calls, logprobs, other choices: ``Delta`` in the processor's
    assembler) already sent, one event's data each. After a ``reset`` the attempt's deltas are
    held back while they repeat those, one for one (a resync after a failed append resends
    them as they were); one that differs raises :class:`Diverged`, as :class:`Relay` does for
    text (a retry that streams its tool calls in other pieces ends the stream there: its
    answer is fetchable by id)."""

    __slots__ = ("_pos", "_replaying", "sent")

    def __init__(self) -> None:
        self.sent: list[str] = []
        self._pos = 0
        self._replaying = False

    def reset(self) -> None:
        self._pos, self._replaying = 0, bool(self.sent)

    def feed(self, data: str) -> bool:
        """Whether to forward this delta; raises Diverged if it contradicts what was sent."""
        if self._replaying:
            if self.sent[self._pos] != data:
                raise Diverged
            self._pos += 1
            self._replaying = self._pos < len(self.sent)
            return False
        self.sent.append(data)
        return True

    def check_finished(self) -> None:
        if self._replaying:
            raise Diverged


def _message(result: dict[str, Any]) -> dict[str, Any]:
    """A choice of the stored result as OpenAI's assistant message."""
    calls = result.get("tool_calls")
    message: dict[str, Any] = {
        "role": "assistant",
        "content": result.get("content") or (None if calls or result.get("refusal") else ""),
        "refusal": result.get("refusal") or None}
    if result.get("reasoning_content"):  # DeepSeek's member, as DeepSeek sends it: when any
        message["reasoning_content"] = result["reasoning_content"]
    if calls:
        message["tool_calls"] = calls
    return message


class Completion:
    """The OpenAI shapes of one task's answer."""

    def __init__(self, task_id: str, model: str, created: int) -> None:
        self.task_id, self.model, self.created = task_id, model, created
        self.id = f"chatcmpl-{task_id}"

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return self._data({"id": self.id, "object": "chat.completion.chunk",
                           "created": self.created, "model": self.model,
                           "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                        "finish_reason": finish_reason}]})

    def choice_chunk(self, data: str) -> bytes:
        """A relayed choice delta (its event's data, ``{"index", "delta", "logprobs"}``)."""
        return self._data({"id": self.id, "object": "chat.completion.chunk",
                           "created": self.created, "model": self.model,
                           "choices": [{**orjson.loads(data), "finish_reason": None}]})

    def finish_chunks(self, result: dict[str, Any]) -> bytes:
        """The last chunk of each choice, with its finish reason (and the fingerprint)."""
        choices = result.get("choices") or [{"index": 0, **result}]
        extra = ({"system_fingerprint": result["system_fingerprint"]}
                 if result.get("system_fingerprint") else {})
        return b"".join(self._data(
            {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
             "model": self.model, **extra, "choices": [{
                 "index": c.get("index", 0), "delta": {}, "logprobs": None,
                 "finish_reason": c.get("finish_reason") or "stop"}]}) for c in choices)

    def usage_chunk(self, result: dict[str, Any]) -> bytes:
        # The SDKs take the fingerprint (and the usage) from the stream's last chunk.
        extra = ({"system_fingerprint": result["system_fingerprint"]}
                 if result.get("system_fingerprint") else {})
        return self._data({"id": self.id, "object": "chat.completion.chunk",
                           "created": self.created, "model": self.model, **extra,
                           "choices": [], "usage": result.get("usage")})

    def whole(self, result: dict[str, Any]) -> dict[str, Any]:
        """The stored result as one ``chat.completion``: every choice, tool calls, logprobs,
        refusal, fingerprint and usage as the provider gave them."""
        choices = result.get("choices") or [{"index": 0, **result}]
        body = {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model,
                "choices": [{"index": c.get("index", 0), "message": _message(c),
                             "logprobs": c.get("logprobs"),
                             "finish_reason": c.get("finish_reason") or "stop"}
                            for c in choices],
                "usage": result.get("usage")}
        if result.get("system_fingerprint"):
            body["system_fingerprint"] = result["system_fingerprint"]
        return body

    @staticmethod
    def _data(obj: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"


# Provider answers about the request itself (a field it does not support, a model it does not
# have, a body too large): the client's to fix, so it gets them as the provider gave them.
PASSED_THROUGH = frozenset({400, 404, 413, 422})


def _failure(event: Event) -> ApiError:
    """The error of a task that ended without an answer (its headers are the caller's)."""
    view = orjson.loads(event.data)
    error = view.get("error") or {}
    if event.type == "cancelled":
        return ApiError(409, "cancelled", error.get("message") or "cancelled by the client")
    if error.get("code") == "deadline_exceeded":  # the client's own limit, not the provider
        return ApiError(408, "deadline_exceeded", error.get("message") or "the deadline passed")
    code = error.get("code") or "provider_error"
    message = error.get("message") or "the task failed"
    status = error.get("status")
    if status in PASSED_THROUGH:
        # "http_400" is ours, said when the provider's error had no code: it had none.
        return ApiError(status, None if code.startswith("http_") else code, message,
                        param=error.get("param"),
                        openai_type=error.get("type") or "invalid_request_error")
    return ApiError(502, code, message)


def _diverged(task_id: str) -> tuple[str, str]:
    return ("retry_diverged", f"task {task_id}: a retry of the provider call does not continue "
            "the text already streamed, so this stream ends here; the task goes on and its "
            f"answer will be at GET /api/tasks/{task_id}")


def _error_event(code: str | None, message: str, param: str | None = None,
                 error_type: str = "api_error") -> bytes:
    body = {"error": {"message": message, "type": error_type, "code": code, "param": param}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    edge = edge_of(request)
    key = idempotency_key(request)
    body = await read_json(request, edge.settings)
    req = parse_task(body, edge.settings, openai=True,
                     priority_header=request.headers.get(PRIORITY_HEADER))
    stream, include_usage = req.stream, req.include_usage
    tenant = tenant_of(request)
    sub = await service.submit(edge, tenant, req, key)
    request[TASK_ID_KEY] = sub.id
    completion = Completion(sub.id, req.model, (sub.created_at or int(time.time() * 1000)) // 1000)
    headers = {TASK_HEADER: sub.id, **sub.headers}
    key, view = edge.keys.events(sub.id), view_loader(edge, tenant, sub.id)
    if stream:
        # Just submitted (not a replay): its stream holds the queued event already.
        batches = follow_batches(request.app[FEEDS], key, None, view, exists=not sub.existing)
        async with contextlib.aclosing(batches):
            return await _relay(request, batches, completion, headers, include_usage)
    events = follow(request.app[FEEDS], key, None, view)
    async with contextlib.aclosing(events):
        return await _wait(request, events, completion, headers)


async def _wait(request: web.Request, events: EventStream, completion: Completion,
                headers: dict[str, str]) -> web.StreamResponse:
    async for event in events:
        if client_gone(request):
            return web.Response(status=499)  # nobody to answer; the task goes on
        if event is None:
            continue
        if event.type == "done":
            result = orjson.loads(event.data).get("result") or {}
            return json_response(completion.whole(result), headers=headers)
        if event.type in TERMINAL_EVENTS:
            err = _failure(event)
            err.headers = {**headers, **NO_RETRY}
            raise err
    raise ApiError(503, *_UNAVAILABLE, headers={**headers, **NO_RETRY})


async def _relay(request: web.Request, batches: BatchStream, completion: Completion,
                 headers: dict[str, str], include_usage: bool) -> web.StreamResponse:
    resp = sse_response(headers)
    await resp.prepare(request)
    keepalive = edge_of(request).settings.keepalive_s
    relays = {kind: Relay() for kind in DELTA_FIELDS}
    choices = ChoiceRelay()
    # The role alone: an answer of tool calls or a refusal has no content, not "". It goes
    # out with the first batch of events (the catch-up read's, at once) or the first tick.
    out = completion.chunk({"role": "assistant"})
    try:
        last_write = time.monotonic()
        async for batch in batches:
            if batch is None:
                if client_gone(request):
                    return resp  # the task goes on; its result stays fetchable by id
                if not out and time.monotonic() - last_write >= keepalive:
                    out = KEEPALIVE
            # What a batch brings is written at once, in one write: nothing is held back.
            for event in batch or ():
                if event.type in DELTA_FIELDS:
                    text = relays[event.type].feed(orjson.loads(event.data).get("delta") or "")
                    if text:
                        out += completion.chunk({DELTA_FIELDS[event.type]: text})
                elif event.type == "choice":
                    if choices.feed(event.data):
                        out += completion.choice_chunk(event.data)
                elif event.type == "reset":
                    for relay in relays.values():
                        relay.reset()
                    choices.reset()
                elif event.type == "done":
                    for relay in relays.values():
                        relay.check_finished()
                    choices.check_finished()
                    result = orjson.loads(event.data).get("result") or {}
                    out += completion.finish_chunks(result)
                    if include_usage:
                        out += completion.usage_chunk(result)
                    await resp.write(out + b"data: [DONE]\n\n")
                    return resp
                elif event.type in TERMINAL_EVENTS:
                    err = _failure(event)
                    await resp.write(out + _error_event(err.code, err.message, err.param,
                                                        err.openai_type or "api_error"))
                    return resp
            if out:
                await resp.write(out)
                out = b""
                last_write = time.monotonic()
        await resp.write(out + _error_event(*_UNAVAILABLE))
    except Diverged:
        # The task goes on; the SDK raises on this event, and the answer is fetchable by id.
        with contextlib.suppress(ConnectionResetError):
            await resp.write(out + _error_event(*_diverged(completion.task_id)))
    except ConnectionResetError:
        pass  # the client left; the task goes on and its result stays fetchable by id
    return resp


async def list_models(request: web.Request) -> web.Response:
    """AI_MODELS, the models a request may name (AI_MODEL, the default, first)."""
    settings = edge_of(request).settings
    models = dict.fromkeys([settings.provider.ai_model, *settings.models])
    return json_response({"object": "list", "data": [
        {"id": model, "object": "model", "created": 0, "owned_by": "sluice"}
        for model in models]})

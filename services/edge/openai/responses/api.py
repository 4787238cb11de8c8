"""``/v1/responses``: OpenAI's Responses API, on the queue.

A response is a task: ``resp_<hex>`` is the task ``tsk_<hex>``, queued, leased, retried,
stored and fetchable like any other (``/api/tasks/<id>``, the dashboard, metrics). The request
is translated into the Chat Completions body ``/v1/chat/completions`` would get
(:mod:`.translate`), validated by the same rules, and submitted with its response context (its
input items, the earlier turns it replays, the fields a response object echoes, the table of
namespaced tool names) under the task request's ``responses`` key, which never reaches the
provider (``services/processor/provider.py``). Everything a retrieve, a stream, a resumed
stream or a later ``previous_response_id`` needs is in that one stored request, so any edge
serves any of them, after restarts too.

Streams are rebuilt from the task's events by :class:`~.events.ResponseEvents`, the same
numbers on every replay: ``?stream=true&starting_after=N`` replays and sends what follows N.
A client that goes away does not cancel its response.

``store: false``: nothing is kept once the response ends. Its processor writes the tombstone a
DELETE leaves instead of its row (the store never holds its request or answer), and gives its
Redis keys ``RESPONSES_UNSTORED_RETENTION_S`` instead of ``EVENTS_RETENTION_S``: time for the
edge following it to read its end. That edge then forgets it at once, as DELETE does
(:func:`_let_go`), before the client has its end: a waiting client, a streamed one, and one
that hung up (its handler follows the response on to its end, writing nothing). An edge that
dies meanwhile forgets nothing: Redis drops the keys when their retention ends, and the row is
a tombstone already. A client that hung up never sees the answer: such a response cannot be
retrieved or resumed (404), as OpenAI answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
from aiohttp import web
from redis.exceptions import RedisError

from services.edge.context import TASK_ID_KEY, Edge, edge_of
from services.edge.openai.chat.api import NO_RETRY, TASK_HEADER
from services.edge.openai.responses import protocol
from services.edge.openai.responses.events import (
    ResponseEvents,
    ToolCallDelta,
    encode,
    seconds,
)
from services.edge.openai.responses.protocol import Echo
from services.edge.openai.responses.translate import (
    ToolNames,
    Translated,
    output_items,
    previous_id,
    responses_param,
    translate_request,
)
from services.edge.plumbing.auth import tenant_of
from services.edge.plumbing.bodies import read_json
from services.edge.plumbing.errors import ApiError
from services.edge.plumbing.replies import json_response
from services.edge.settings import EdgeSettings
from services.edge.tasks import service
from services.edge.tasks.events import KEEPALIVE, client_gone, follow, sse_response, view_loader
from services.edge.tasks.feeds import FEEDS, TERMINAL_EVENTS, Event
from services.edge.tasks.validation import PRIORITY_HEADER, parse_task
from services.edge.tasks.views import idempotency_key
from shared import logs, tasks
from shared.redis_conn import UNAVAILABLE
from shared.steps import StillActive
from shared.store import StoreUnavailable
from shared.timeutil import now_ms

log = logs.get("sluice.edge")

CONTEXT = tasks.RESPONSES  # the task request's key for its response context (never sent on)
OMITTED_HEADER = "X-Sluice-Omitted-Tools"  # tools left out of the provider's call
IGNORED_HEADER = "X-Sluice-Ignored"  # fields and include values Sluice does not serve
CANCEL_WAIT_S = 5.0  # how long a cancel waits for a running response to stop
LIST_LIMIT_MAX = 100
STARTING_AFTER_MAX = 2**62
_UNAVAILABLE = ("unavailable", "the edge stopped following this response; retrieve it, or "
                "resume its stream with starting_after")
_STATUS = {tasks.QUEUED: protocol.QUEUED, tasks.BATCHED: protocol.QUEUED,
           tasks.RUNNING: protocol.IN_PROGRESS, tasks.FAILED: protocol.FAILED,
           tasks.CANCELLED: protocol.CANCELLED}


@dataclass(frozen=True, slots=True)
class Stored:
    """A response read back: its task's view and the context stored with its request."""

    resp_id: str
    task_id: str
    view: dict[str, Any]
    context: dict[str, Any]

    @property
    def echo(self) -> Echo:
        return Echo.from_json(self.context.get("echo") or {})

    @property
    def names(self) -> ToolNames:
        return ToolNames.from_json(self.context.get("names"))

    @property
    def created_at(self) -> int:
        return seconds(self.view.get("created_at")) or 0

    def replay(self) -> list[dict[str, Any]]:
        """The items a later turn replays: the turns before this one, this one's input, and
        its output."""
        result = self.view.get("result") if self.view.get("status") == tasks.SUCCEEDED else None
        output = output_items(result, self.resp_id, self.names) if result else []
        return [*self.context.get("history", []), *self.context.get("input", []), *output]


def context(t: Translated, history: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"echo": t.echo.to_json(), "names": t.tool_names.to_json(), "input": t.input_items,
            "history": history or []}


def response_from_view(resp_id: str, view: dict[str, Any], echo: Echo, names: ToolNames, *,
                       model: str, created_at: int) -> dict[str, Any]:
    """The response object of a task's view (as retrieve, and the waiting create, answer)."""
    status = view.get("status") or tasks.QUEUED
    result = view.get("result") or None
    extra: dict[str, Any] = {"completed_at": seconds(view.get("completed_at"))}
    if status == tasks.SUCCEEDED:
        reason = protocol.incomplete_reason((result or {}).get("finish_reason"))
        mapped = protocol.COMPLETED if reason is None else protocol.INCOMPLETE
        extra["incomplete_reason"] = reason
    else:
        mapped = _STATUS.get(status, protocol.QUEUED)
    if mapped == protocol.FAILED:
        extra["error"] = protocol.error_object(view.get("error"))
    incomplete = mapped != protocol.COMPLETED
    output = output_items(result, resp_id, names, incomplete=incomplete) if result else []
    return protocol.response_object(
        resp_id, echo, model=model, created_at=created_at, status=mapped, output=output,
        usage=protocol.usage((result or {}).get("usage")), **extra)


async def load(edge: Edge, tenant: str, resp_id: str, param: str | None = None) -> Stored:
    """A response of this tenant's, or 404 (an unknown id, another tenant's, a task that is not
    a response, one made with ``store: false``)."""
    task_id = protocol.task_id_of(resp_id)
    if task_id is None:
        raise _not_found(param)
    try:
        view, raw = await service.read_with_request(edge, tenant, task_id)
    except ApiError as err:
        if err.status == 404:
            raise _not_found(param) from None
        raise
    ctx = orjson.loads(raw).get(CONTEXT) if raw else None
    if not isinstance(ctx, dict) or (ctx.get("echo") or {}).get("store") is False:
        raise _not_found(param)
    return Stored(resp_id, task_id, view, ctx)


def _not_found(param: str | None) -> ApiError:
    # The id is not echoed, as no route echoes one it did not find: a 404 says the same for an
    # id that never existed and for another tenant's.
    return ApiError(404, "not_found", "no response with this id", param=param)


def _as_responses_error(err: ApiError, origins: list[str]) -> ApiError:
    """An error the Chat Completions validation found, naming the Responses field; a bad
    request is a 400 here, as OpenAI answers it."""
    param = responses_param(err.param, origins)
    message = err.message
    if err.param and param and message.startswith(err.param + ":"):
        message = param + message[len(err.param):]
    status = 400 if err.status == 422 else err.status
    return ApiError(status, err.code, message, headers=err.headers, param=param,
                    openai_type=err.openai_type)


_UNSAFE = re.compile(r"[^\x20-\x7e]")  # what a header value must not carry
NOTE_MAX = 1024


def _notes(t: Translated) -> dict[str, str]:
    """The headers naming what was left out. The names come from the client (a tool's type,
    an include value): anything but printable ASCII becomes ``?``, so no value can break or
    inject a header."""
    notes = {}
    for header, names in ((OMITTED_HEADER, t.omitted_tools), (IGNORED_HEADER, t.ignored)):
        if names:
            notes[header] = _UNSAFE.sub("?", ", ".join(names))[:NOTE_MAX]
    return notes


def batch_payload(body: Any, settings: EdgeSettings) -> dict[str, Any]:
    """The task request of a Batch API line whose ``url`` is ``/v1/responses``: what
    ``create`` would submit for ``body``, checked by the same rules (so a line that passes
    never fails at submit). No I/O: ``previous_response_id`` needs a read of the store and is
    refused in a line, as ``stream`` is (a batch has no one to stream to), and ``store: false``
    (the output file is made from the stored answer, which such a response never has)."""
    if isinstance(body, dict):
        for name in ("previous_response_id", "stream"):
            if body.get(name) not in (None, False):
                raise ApiError(400, "invalid_request",
                               f"{name}: not supported in a batch line", param=name)
        if body.get("store") is False:
            raise ApiError(400, "invalid_request", "store: false is not supported in a batch "
                           "line (its output is made from the stored answer)", param="store")
    t = translate_request(body, hosted_tools=settings.responses_hosted_tools)
    try:
        req = parse_task(t.chat, settings, openai=True)
    except ApiError as err:
        raise _as_responses_error(err, t.origins) from None
    return {**req.payload, CONTEXT: context(t, None)}


def batch_body(task_id: str, row: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """A finished line's response object (its output line's ``body``), from its task's row
    and the request ``batch_payload`` made."""
    ctx = request.get(CONTEXT) or {}
    return response_from_view(
        protocol.response_id(task_id), tasks.view_from_row(row),
        Echo.from_json(ctx.get("echo") or {}), ToolNames.from_json(ctx.get("names")),
        model=row.get("model") or "", created_at=int(row.get("created_at") or 0) // 1000)


# --- POST /v1/responses ---------------------------------------------------------------

async def create(request: web.Request) -> web.StreamResponse:
    edge = edge_of(request)
    settings = edge.settings
    key = idempotency_key(request)
    body = await read_json(request, settings)
    tenant = tenant_of(request)
    history = None
    earlier_id = previous_id(body) if isinstance(body, dict) else None
    if earlier_id is not None:
        history = (await load(edge, tenant, earlier_id, "previous_response_id")).replay()
    t = translate_request(body, previous=history, hosted_tools=settings.responses_hosted_tools)
    try:
        req = parse_task(t.chat, settings, openai=True,
                         priority_header=request.headers.get(PRIORITY_HEADER))
    except ApiError as err:
        raise _as_responses_error(err, t.origins) from None
    req = msgspec.structs.replace(req, payload={**req.payload, CONTEXT: context(t, history)})
    sub = await service.submit(edge, tenant, req, key)
    request[TASK_ID_KEY] = sub.id
    if t.omitted_tools or t.ignored:
        log.info("responses_not_served", task_id=sub.id, tools=t.omitted_tools,
                 ignored=t.ignored)
    rid = protocol.response_id(sub.id)
    created_at = (sub.created_at or now_ms()) // 1000
    headers = {TASK_HEADER: sub.id, **sub.headers, **_notes(t)}
    unstored = not t.echo.store
    if t.stream:
        machine = ResponseEvents(rid, t.echo, model=req.model, created_at=created_at,
                                 names=t.tool_names)
        return await _stream(request, edge, tenant, sub.id, machine, -1, headers,
                             unstored=unstored)
    if t.background:
        return json_response(protocol.response_object(
            rid, t.echo, model=req.model, created_at=created_at, status=protocol.QUEUED),
            headers=headers)
    view = await _terminal(request, edge, tenant, sub.id, stay=unstored)
    if view is not None and unstored:
        await _let_go(edge, tenant, sub.id, succeeded=view.get("status") == tasks.SUCCEEDED)
    if view is None or client_gone(request):
        if client_gone(request):
            return web.Response(status=499)  # nobody to answer; the response goes on
        raise ApiError(503, *_UNAVAILABLE, headers={**headers, **NO_RETRY})
    return json_response(response_from_view(rid, view, t.echo, t.tool_names, model=req.model,
                                            created_at=created_at), headers=headers)


async def _terminal(request: web.Request, edge: Edge, tenant: str, task_id: str, *,
                    stay: bool = False) -> dict[str, Any] | None:
    """The task's terminal view, once it ends; None if the edge stopped following it, or the
    client left (unless ``stay``: then to the end all the same)."""
    events = follow(request.app[FEEDS], edge.keys.events(task_id), None,
                    view_loader(edge, tenant, task_id))
    async with contextlib.aclosing(events):
        async for event in events:
            if not stay and client_gone(request):
                return None
            if event is not None and event.type in TERMINAL_EVENTS:
                return await service.read(edge, tenant, task_id)
    return None


# --- streams -----------------------------------------------------------------------------------

async def _stream(request: web.Request, edge: Edge, tenant: str, task_id: str,
                  machine: ResponseEvents, after: int, headers: dict[str, str], *,
                  unstored: bool = False) -> web.StreamResponse:
    """The response's events numbered above ``after``: replayed from the task's events, then
    live, to its end. A client that leaves does not stop the response; ``unstored``: this
    handler follows it on to its end all the same, to forget it then."""
    resp = sse_response(headers)
    await resp.prepare(request)
    keepalive = edge.settings.keepalive_s
    events = follow(request.app[FEEDS], edge.keys.events(task_id), None,
                    view_loader(edge, tenant, task_id))
    gone = False  # the client left: nothing more is written

    async def send(data: bytes) -> bool:
        nonlocal gone
        if gone or not data:
            return False
        try:
            await resp.write(data)
        except ConnectionResetError:
            gone = True
        return not gone

    async with contextlib.aclosing(events):
        last_write = time.monotonic()
        async for event in events:
            if event is None:
                gone = gone or client_gone(request)
                if gone and not unstored:
                    return resp  # the response goes on; retrieve it or resume later
                if time.monotonic() - last_write >= keepalive and await send(KEEPALIVE):
                    last_write = time.monotonic()
                continue
            out = _feed(machine, event)
            if machine.ended and unstored:  # forgotten before the client has its end
                await _let_go(edge, tenant, task_id, succeeded=event.type == "done")
            if await send(b"".join(encode(e) for e in out if e["sequence_number"] > after)):
                last_write = time.monotonic()
            if machine.ended or (gone and not unstored):
                return resp
        await send(b"".join(encode(e) for e in machine.abort(*_UNAVAILABLE)))
    return resp


async def _let_go(edge: Edge, tenant: str, task_id: str, *, succeeded: bool) -> None:
    """A ``store: false`` response ended: forget it, as DELETE does. Redis first
    (:meth:`~shared.steps.Steps.forget`), then the tombstone
    (:meth:`~shared.store.Store.forget_task`), unless it succeeded: a success is written by its
    processor, which wrote the tombstone before it marked the task ended. A cancel or a
    deadline may end it in Redis alone, and once Redis forgot it no processor writes its row.
    A failure here costs no answer: Redis lets the keys go within
    RESPONSES_UNSTORED_RETENTION_S, and the row is a tombstone or comes as one."""
    try:
        if isinstance(await edge.steps.forget(task_id=task_id, tenant=tenant), StillActive):
            return  # cannot be after its terminal event; nothing to do but let Redis expire it
        if not succeeded:
            await edge.store.forget_task(task_id, tenant, tasks.DELETED, now_ms())
    except (*UNAVAILABLE, RedisError, StoreUnavailable) as exc:
        log.warning("unstored_not_forgotten", task_id=task_id, error=str(exc))


def _feed(machine: ResponseEvents, event: Event) -> list[dict[str, Any]]:
    data = orjson.loads(event.data)
    if event.type == "choice":
        return _choice(machine, data)
    return machine.feed(event.type, data)


def _choice(machine: ResponseEvents, data: dict[str, Any]) -> list[dict[str, Any]]:
    """A relayed choice delta (``{"index", "delta", "logprobs"}``): its tool-call pieces. A
    response has one choice (``n`` is not a Responses field), and logprobs are not served."""
    if data.get("index", 0) != 0:
        return []
    out: list[dict[str, Any]] = []
    for piece in (data.get("delta") or {}).get("tool_calls") or []:
        function = piece.get("function") or {}
        out += machine.tool_call(ToolCallDelta(
            index=int(piece.get("index", 0)), id=piece.get("id"), name=function.get("name"),
            arguments=function.get("arguments") or ""))
    return out


# --- GET /v1/responses/{id} ---------------------------------------------------------------------

def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise ApiError(400, "invalid_request", f"{name}: must be true or false", param=name)


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.strip().lstrip("-").isdigit() or not lo <= int(raw) <= hi:
        raise ApiError(400, "invalid_request", f"{name}: must be an integer from {lo} to {hi}",
                       param=name)
    return int(raw)


async def retrieve(request: web.Request) -> web.StreamResponse:
    edge, tenant = edge_of(request), tenant_of(request)
    stored = await load(edge, tenant, request.match_info["id"])
    request[TASK_ID_KEY] = stored.task_id
    model = stored.view.get("model") or edge.settings.provider.ai_model
    after = _int_query(request, "starting_after", -1, -1, STARTING_AFTER_MAX)
    if _flag(request, "stream"):
        machine = ResponseEvents(stored.resp_id, stored.echo, model=model,
                                 created_at=stored.created_at, names=stored.names)
        return await _stream(request, edge, tenant, stored.task_id, machine, after,
                             {TASK_HEADER: stored.task_id})
    return json_response(response_from_view(stored.resp_id, stored.view, stored.echo,
                                            stored.names, model=model,
                                            created_at=stored.created_at),
                         headers={TASK_HEADER: stored.task_id})


# --- POST /v1/responses/{id}/cancel ------------------------------------------------------------

async def cancel(request: web.Request) -> web.Response:
    """Cancelled is terminal: cancelling again answers the same object. A response that
    finished otherwise cannot be cancelled (409)."""
    edge, tenant = edge_of(request), tenant_of(request)
    stored = await load(edge, tenant, request.match_info["id"])
    request[TASK_ID_KEY] = stored.task_id
    try:
        outcome = await service.cancel(edge, tenant, stored.task_id)
    except ApiError as err:
        if err.code != "already_terminal":
            raise
        if stored.view.get("status") != tasks.CANCELLED:
            raise ApiError(409, "already_terminal", "this response has already finished; "
                           "only a queued or running response can be cancelled") from None
        outcome = {"status": tasks.CANCELLED}
    if outcome["status"] != tasks.CANCELLED:  # running: its processor stops it in a moment
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CANCEL_WAIT_S):
                await _terminal(request, edge, tenant, stored.task_id)
    stored = await load(edge, tenant, stored.resp_id)
    model = stored.view.get("model") or edge.settings.provider.ai_model
    return json_response(response_from_view(stored.resp_id, stored.view, stored.echo,
                                            stored.names, model=model,
                                            created_at=stored.created_at),
                         headers={TASK_HEADER: stored.task_id})


# --- DELETE /v1/responses/{id} ----------------------------------------------------------------

async def delete(request: web.Request) -> web.Response:
    """Delete a response for good: a later retrieve, stream, input items or
    ``previous_response_id`` naming it is a 404, on every edge, after restarts too.

    A queued or running response is cancelled first (its holder would otherwise write it
    again), then deleted once it stopped; one still running CANCEL_WAIT_S later is a 409 and
    nothing is deleted. Redis forgets it first (:meth:`~shared.steps.Steps.forget`, only once
    it is terminal), then its row becomes a tombstone (:meth:`~shared.store.Store.forget_task`,
    the highest fence, so no late write brings it back). A failure between the two leaves it
    readable from the store, and deleting again finishes the job."""
    edge, tenant = edge_of(request), tenant_of(request)
    stored = await load(edge, tenant, request.match_info["id"])
    task_id = request[TASK_ID_KEY] = stored.task_id
    if stored.view.get("status") not in tasks.TERMINAL:
        try:
            await service.cancel(edge, tenant, task_id)
        except ApiError as err:
            if err.code != "already_terminal":
                raise  # e.g. Redis is full: 503, and nothing changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CANCEL_WAIT_S):
                await _terminal(request, edge, tenant, task_id)
    if isinstance(await edge.steps.forget(task_id=task_id, tenant=tenant), StillActive):
        raise ApiError(409, "still_running", "this response is still running after its "
                       "cancellation; delete it again in a moment")
    if not await edge.store.forget_task(task_id, tenant, tasks.DELETED, now_ms()):
        raise _not_found(None)  # another tenant's row: never ours to delete
    log.info("response_deleted", task_id=task_id)
    return json_response({"id": stored.resp_id, "object": "response.deleted", "deleted": True},
                         headers={TASK_HEADER: task_id})


# --- GET /v1/responses/{id}/input_items --------------------------------------------------------

async def input_items(request: web.Request) -> web.Response:
    edge, tenant = edge_of(request), tenant_of(request)
    stored = await load(edge, tenant, request.match_info["id"])
    request[TASK_ID_KEY] = stored.task_id
    limit = _int_query(request, "limit", 20, 1, LIST_LIMIT_MAX)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "invalid_request", "order: must be asc or desc", param="order")
    items = protocol.listed_input(stored.context.get("input") or [], stored.resp_id)
    return json_response(protocol.page(items, limit=limit, order=order,
                                       after=request.query.get("after")))

"""aiohttp application: OpenAI-compatible endpoints plus the /mock control plane.

Run it with `handler_cancellation=True` on the runner (``python -m services.mockai`` and
aiohttp's TestServer both do) so a client disconnect cancels the handler at once and
`disconnected_at` is exact. Without it, disconnects are still detected: by the next
failing write, or by the transport poll in `_sleep` during long waits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import itertools
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import web

from services.mockai import http_metrics
from shared.config import MOCK_HEADER, Secret

from . import outage
from .faults import (
    AnswerShape,
    Fault,
    FaultCounters,
    FaultKind,
    FaultSpecError,
    bad_answer,
    parse_fault,
    parse_fault_header,
)
from .limits import Limiter
from .protocol import (
    DONE,
    ChatRequest,
    ChunkEncoder,
    RequestError,
    completion_body,
    error_body,
    parse_chat_request,
    status_error_defaults,
    stream_error_event,
    usage,
)
from .records import RecordStore, RequestRecord
from .rich import RichAnswer, build
from .settings import MockSettings
from .text import content_tokens, reasoning_tokens

log = structlog.get_logger("mockai")

# Long waits (TTFT, stalls) wake this often to notice a vanished client even when the
# runner does not cancel handlers; short enough for tests, cheap for 1,000 streams.
POLL_S = 0.25
# Prompts can be big (benchmarks replay long contexts); aiohttp's default is 1 MiB.
CLIENT_MAX_SIZE = 32 * 1024 * 1024
KEEPALIVE_EVERY_S = 0.2
# Faults that fire at a position in the content stream.
_POSITIONAL = frozenset({FaultKind.CUT, FaultKind.STALL, FaultKind.STREAM_ERROR})


class MockState:
    """Mutable per-app state: request records, fault counters, id sequence."""

    __slots__ = ("_ids", "_prefix", "faults", "limiter", "records", "started")

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.records = RecordStore()
        self.faults = FaultCounters()
        self.started = int(time.time())
        # Random per-process prefix keeps ids unique across restarts; the counter keeps
        # them cheap and ordered within one process.
        self._prefix = secrets.token_hex(4)
        self._ids = itertools.count(1)

    def new_id(self) -> str:
        return f"chatcmpl-{self._prefix}{next(self._ids):010x}"


SETTINGS_KEY = web.AppKey("mockai_settings", MockSettings)
STATE_KEY = web.AppKey("mockai_state", MockState)


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything about one completion, decided before the first byte is sent."""

    cid: str
    created: int
    model: str
    reasoning: tuple[str, ...]
    content: tuple[str, ...]
    finish_reason: str
    usage: dict[str, Any]
    include_usage: bool
    ttft_s: float
    interval_s: float  # 0 = no pacing between tokens
    keepalive_s: float = 0.0  # `: keep-alive` comments only, before the first token
    rich: RichAnswer | None = None  # tool calls, logprobs, n choices...: see rich.py


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


async def _sleep(request: web.Request, seconds: float) -> None:
    """Sleep, but raise ConnectionResetError as soon as the client is seen to be gone."""
    if seconds <= 0:
        return
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while True:
        remaining = end - loop.time()
        if remaining <= 0:
            return
        await asyncio.sleep(min(remaining, POLL_S))
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client disconnected")


def _plan(settings: MockSettings, req: ChatRequest, cid: str) -> Plan:
    mock = req.mock
    n_content = settings.content_tokens if mock.content_tokens is None else mock.content_tokens
    n_reasoning = (
        settings.reasoning_tokens if mock.reasoning_tokens is None else mock.reasoning_tokens
    )
    finish_reason = "stop"
    if req.max_tokens is not None and req.max_tokens < n_content:
        n_content, finish_reason = req.max_tokens, "length"
    ttft_ms = settings.ttft_ms if mock.ttft_ms is None else mock.ttft_ms
    rate = settings.tokens_per_s if mock.tokens_per_s is None else mock.tokens_per_s
    seed = req.prompt.seed
    if mock.vary:  # the request id is unique, so every call answers other words
        seed = hashlib.blake2b(seed + cid.encode(), digest_size=16).digest()
    created, model = int(time.time()), req.model or settings.model
    use = usage(req.prompt.words, n_reasoning, n_content)
    rich = None
    if req.rich:
        rich = build(req, cid, created, model, seed, mock.content_tokens
                     if mock.content_tokens is not None else settings.content_tokens,
                     n_reasoning, use, tool_arguments=settings.tool_arguments)
    return Plan(
        cid=cid,
        created=created,
        model=model,
        reasoning=reasoning_tokens(seed, n_reasoning),
        content=content_tokens(seed, n_content),
        finish_reason=rich.finish_reason if rich is not None else finish_reason,
        usage=use,
        include_usage=req.include_usage,
        ttft_s=ttft_ms / 1000.0,
        interval_s=1.0 / rate if rate > 0 else 0.0,
        keepalive_s=mock.keepalive_s or 0.0,
        rich=rich,
    )


def _auth_failure(request: web.Request, api_key: Secret[str] | None) -> web.Response | None:
    if api_key is None:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), api_key.get().encode()):
        return None
    message = "Incorrect API key provided." if header else "You didn't provide an API key."
    return _json(
        error_body(message, "invalid_request_error", "invalid_api_key"),
        status=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


# --- handlers --------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    return _json(b'{"status":"ok"}')


async def list_models(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    denied = _auth_failure(request, settings.api_key)
    if denied is not None:
        return denied
    model = {
        "id": settings.model,
        "object": "model",
        "created": request.app[STATE_KEY].started,
        "owned_by": "sluice-mockai",
    }
    return _json(orjson.dumps({"object": "list", "data": [model]}))


async def mock_requests(request: web.Request) -> web.Response:
    # orjson: up to 10,000 records, and tests poll this endpoint in tight loops.
    records = request.app[STATE_KEY].records.to_json(request.query.get("tag"))
    return _json(orjson.dumps({"requests": records}))


async def mock_reset(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    cleared = state.records.clear()
    state.faults.clear()
    return _json(orjson.dumps({"status": "ok", "cleared": cleared}))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    state = request.app[STATE_KEY]
    cid = state.new_id()
    rec = RequestRecord(cid)
    state.records.add(rec)
    headers = {"X-Request-Id": cid}

    denied = _auth_failure(request, settings.api_key)
    if denied is not None:
        rec.finish("rejected", 401)
        return denied
    down = request.app[outage.OUTAGE_KEY].answer()
    if down is not None:
        rec.finish("error_status", down.status)
        return down

    try:
        req = parse_chat_request(await request.read())
    except RequestError as exc:
        rec.finish("rejected", 400)
        return _json(error_body(str(exc), code=exc.code), 400, headers)
    rec.tag = req.mock.tag
    if req.mock.record or settings.record_bodies:
        rec.body = req.body
    refused = next((f for f in (*req.mock.reject, *settings.reject_params) if f in req.body),
                   None)
    if refused is not None:  # what OpenAI answers a parameter it does not know
        rec.finish("rejected", 400)
        return _json(orjson.dumps({"error": {
            "message": f"Unrecognized request argument supplied: {refused}",
            "type": "invalid_request_error", "param": refused, "code": None}}), 400, headers)

    if req.mock.replay is not None:
        return _replay(settings, rec, req.mock.replay, headers)

    try:
        header = request.headers.get("X-Mock-Fault")
        fault: Fault | None = None
        if header is not None:  # header wins over the body, per the fault contract
            fault = parse_fault_header(header)
        elif req.mock.fault is not None:
            fault = parse_fault(req.mock.fault)
    except FaultSpecError as exc:
        rec.finish("rejected", 400)
        return _json(error_body(str(exc), code="invalid_mock_fault"), 400, headers)

    if fault is not None:
        rec.fault_key = fault.key
        if state.faults.claim(fault):
            rec.fault = fault.kind.value
            log.info("mockai.fault", request_id=cid, kind=fault.kind.value, key=fault.key)
        else:
            fault = None

    if fault is not None and fault.kind is FaultKind.STATUS:
        return _status_fault(rec, fault, headers)
    if fault is not None and fault.kind is FaultKind.ANSWER:
        return await _bad_answer(request, rec, fault, headers)

    plan = _plan(settings, req, cid)
    if fault is not None and fault.kind is FaultKind.USAGE:
        plan = dataclasses.replace(plan, usage=fault.usage or {})
    if fault is not None and fault.kind is FaultKind.HEADERS:
        headers.update(fault.headers or {})
    limiter = state.limiter
    if not limiter.settings.active:
        return await _answer(request, settings, req, rec, plan, fault, headers)
    tokens = plan.usage.get("total_tokens")
    verdict = limiter.admit(tokens if isinstance(tokens, int) else 0)
    rec.ratelimit = {k: v for k, v in verdict.headers.items() if k.startswith("x-ratelimit")}
    headers.update(verdict.headers)
    if verdict.limit is not None:
        return _limit_refusal(rec, verdict.limit, limiter.settings.status, headers)
    try:
        return await _answer(request, settings, req, rec, plan, fault, headers)
    finally:
        limiter.release()


async def _answer(
    request: web.Request,
    settings: MockSettings,
    req: ChatRequest,
    rec: RequestRecord,
    plan: Plan,
    fault: Fault | None,
    headers: dict[str, str],
) -> web.StreamResponse:
    rec.set_tokens(plan.reasoning, plan.content)
    stream = (
        req.stream
        and not settings.no_stream
        and not (fault is not None and fault.kind is FaultKind.JSON)
    )
    rec.stream = stream
    if stream:
        return await _SseStream(request, rec, plan, fault).run(headers)
    return await _respond_json(request, rec, plan, fault, headers)


def _replay(settings: MockSettings, rec: RequestRecord, name: str,
            headers: dict[str, str]) -> web.Response:
    """A captured answer, byte for byte: ``.sse`` files as a stream, others as JSON."""
    folder = settings.replay_dir
    path = Path(folder, name) if folder else None
    if path is None or "/" in name or "\\" in name or name.startswith(".") or not path.is_file():
        rec.finish("rejected", 400)
        return _json(error_body(f"metadata.mock.replay: no file {name!r} in MOCKAI_REPLAY_DIR"),
                     400, headers)
    rec.stream = name.endswith(".sse")
    rec.finish("completed")
    return web.Response(body=path.read_bytes(), headers=headers, content_type=(
        "text/event-stream" if rec.stream else "application/json"))


def _limit_refusal(
    rec: RequestRecord, limit: str, status: int, headers: dict[str, str]
) -> web.Response:
    """A refusal shaped like the providers' own: OpenAI's 429 names the limit reached, a busy
    SiliconFlow answers 503, Anthropic's overloaded API 529."""
    error_type, code = status_error_defaults(status)
    message = (
        f"mock: rate limit reached for {limit}"
        if status == 429
        else "mock: the system is overloaded, too busy, retry later"
    )
    rec.limit = limit
    rec.finish("rate_limited", status)
    return _json(error_body(message, error_type, code), status, headers)


def _client_gone(rec: RequestRecord) -> None:
    if rec.client_gone():  # False when we closed the connection ourselves (cut fault)
        log.info(
            "mockai.client_disconnected",
            request_id=rec.id,
            tokens_sent=rec.reasoning_sent + rec.content_sent,
        )


def _status_fault(rec: RequestRecord, fault: Fault, headers: dict[str, str]) -> web.Response:
    error_type, code = status_error_defaults(fault.status)
    body = error_body(
        fault.message or f"mock: injected HTTP {fault.status}",
        fault.error_type or error_type,
        fault.code if fault.code is not None else code,
    )
    if fault.retry_after is not None:
        headers["Retry-After"] = fault.retry_after
    rec.finish("error_status", fault.status)
    return _json(body, fault.status, headers)


# An endless line is written in pieces of this size; the client's line cap must stop it.
ENDLESS_PIECE = b"x" * 65536


async def _bad_answer(
    request: web.Request, rec: RequestRecord, fault: Fault, headers: dict[str, str]
) -> web.StreamResponse:
    """A 200 that is no answer (see AnswerShape), whether or not a stream was asked for."""
    if fault.answer is not AnswerShape.ENDLESS_LINE:
        content_type, body = bad_answer(fault)
        rec.finish("bad_answer", 200)
        return web.Response(body=body, content_type=content_type, headers=headers)
    resp = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
    try:
        await resp.prepare(request)
        await resp.write(b"data: ")
        while True:  # until the client gives up and the write (or the cancel) says so
            await resp.write(ENDLESS_PIECE)
    except ConnectionError:
        _client_gone(rec)
    except asyncio.CancelledError:
        _client_gone(rec)
        raise
    return resp


async def _respond_json(
    request: web.Request,
    rec: RequestRecord,
    plan: Plan,
    fault: Fault | None,
    headers: dict[str, str],
) -> web.StreamResponse:
    """Non-streaming answer, after the whole generation time has elapsed."""
    n_reasoning, n_content = len(plan.reasoning), len(plan.content)
    positional = fault is not None and fault.kind in _POSITIONAL
    # A positional fault fires once `after` content tokens would have been generated.
    generated = n_reasoning + (min(fault.after, n_content) if fault and positional else n_content)
    delay = plan.ttft_s + generated * plan.interval_s
    if fault is not None and fault.kind is FaultKind.STALL:
        delay += fault.stall_s + (n_content - min(fault.after, n_content)) * plan.interval_s
    try:
        await _sleep(request, delay)
    except ConnectionError:
        _client_gone(rec)
        return web.Response()  # never reaches anyone; aiohttp drops it quietly
    except asyncio.CancelledError:
        _client_gone(rec)
        raise

    if fault is not None and fault.kind is FaultKind.CUT:
        # No bytes at all: the client sees the server drop the connection mid-request.
        rec.finish("cut")
        if request.transport is not None:
            request.transport.close()
        return web.Response()
    if fault is not None and fault.kind is FaultKind.STREAM_ERROR:
        message = fault.message or "mock: injected server error"
        rec.finish("error_status", 500)
        return _json(error_body(message, "server_error", 500), 500, headers)

    if plan.rich is not None:
        rec.finish_reason = plan.finish_reason
        rec.finish("completed")
        return _json(plan.rich.body, headers=headers)
    reasoning = "".join(plan.reasoning) if n_reasoning else None
    body = completion_body(
        plan.cid,
        plan.created,
        plan.model,
        "".join(plan.content),
        reasoning,
        plan.finish_reason,
        plan.usage,
    )
    rec.reasoning_sent, rec.content_sent = n_reasoning, n_content
    rec.finish_reason = plan.finish_reason
    rec.finish("completed")
    return _json(body, headers=headers)


class _SseStream:
    """One paced SSE completion.

    Tokens are scheduled on absolute deadlines (ttft + i/rate from the start) instead of
    sleeping a fixed interval after each write, so pacing does not drift under load; when
    the loop falls behind, every overdue token goes out in a single write. With no delay
    configured, the whole body is one write_eof() call.
    """

    __slots__ = ("enc", "fault", "i", "n_reasoning", "out", "plan", "rec", "request", "resp", "t0")

    def __init__(
        self, request: web.Request, rec: RequestRecord, plan: Plan, fault: Fault | None
    ) -> None:
        self.request = request
        self.rec = rec
        self.plan = plan
        self.fault = fault
        self.enc = ChunkEncoder(plan.cid, plan.created, plan.model)
        self.n_reasoning = len(plan.reasoning)
        self.resp = web.StreamResponse()
        # Encoded but not yet written (a rich answer's chunks hold their own role chunks).
        self.out: list[bytes] = [] if plan.rich is not None else [self.enc.role()]
        self.i = 0  # next token index (reasoning tokens first, then content)
        self.t0 = asyncio.get_running_loop().time() + plan.ttft_s  # deadline of token 0

    def _chunk(self, i: int) -> bytes:
        if self.plan.rich is not None:
            return self.plan.rich.chunks[i]
        if i < self.n_reasoning:
            return self.enc.reasoning(self.plan.reasoning[i])
        return self.enc.content(self.plan.content[i - self.n_reasoning])

    def _progress(self) -> None:
        self.rec.reasoning_sent = min(self.i, self.n_reasoning)
        self.rec.content_sent = max(0, self.i - self.n_reasoning)

    async def _flush(self) -> None:
        if self.out:
            data = b"".join(self.out)
            self.out.clear()
            await self.resp.write(data)
            self._progress()

    async def _finish(self, tail: list[bytes]) -> None:
        self.out.extend(tail)
        data = b"".join(self.out)
        self.out.clear()
        await self.resp.write_eof(data)
        self._progress()

    async def _emit_until(self, stop: int) -> None:
        """Encode tokens up to `stop`, writing and sleeping as their deadlines require.

        The last batch stays in `out`, so the caller can send it together with whatever
        follows (finish chunk, [DONE]) in one write.
        """
        interval = self.plan.interval_s
        if self.plan.ttft_s <= 0 and interval <= 0:  # benchmark mode: no clock, no sleep
            self.out.extend(self._chunk(k) for k in range(self.i, stop))
            self.i = max(self.i, stop)
            return
        loop = asyncio.get_running_loop()
        while self.i < stop:
            now = loop.time()
            due = self.t0 + self.i * interval
            if due > now:
                await self._flush()
                await _sleep(self.request, due - now)
                now = loop.time()
            end = stop
            if interval > 0:
                # Everything already due, at least one token (timers may fire a hair early).
                end = min(stop, max(self.i + 1, int((now - self.t0) / interval) + 1))
            self.out.extend(self._chunk(k) for k in range(self.i, end))
            self.i = end

    async def _keep_alive(self, seconds: float) -> None:
        """Comments only, every KEEPALIVE_EVERY_S, then the stream starts as planned."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            await self.resp.write(b": keep-alive\n\n")
            await _sleep(self.request, min(left, KEEPALIVE_EVERY_S))
        self.t0 = loop.time() + self.plan.ttft_s

    async def run(self, headers: dict[str, str]) -> web.StreamResponse:
        plan, fault, rec = self.plan, self.fault, self.rec
        resp = self.resp
        resp.headers.update(headers)
        resp.headers["Content-Type"] = "text/event-stream"
        if fault is not None and fault.kind is FaultKind.CONTENT_TYPE:
            resp.headers["Content-Type"] = fault.content_type or ""
        resp.headers["Cache-Control"] = "no-cache"
        total = self.n_reasoning + len(plan.content)
        if plan.rich is not None:  # its finish chunks are its last: a cut comes before them
            total = len(plan.rich.chunks)
        stop = total
        if fault is not None and fault.kind in _POSITIONAL:
            stop = self.n_reasoning + min(fault.after, len(plan.content))
        try:
            await resp.prepare(self.request)
            if plan.keepalive_s > 0:
                await self._keep_alive(plan.keepalive_s)
            await self._emit_until(stop)
            if fault is not None and fault.kind is FaultKind.CUT:
                await self._flush()
                rec.finish("cut")
                # close() flushes what we wrote, then drops the socket without the
                # terminating zero-length chunk: the client sees a truncated body.
                transport = self.request.transport
                if transport is not None:
                    transport.close()
                return resp
            if fault is not None and fault.kind is FaultKind.STREAM_ERROR:
                message = fault.message or "mock: injected error in stream"
                await self._finish([stream_error_event(message)])
                rec.finish("stream_error")
                return resp
            if fault is not None and fault.kind is FaultKind.STALL:
                await self._flush()
                loop = asyncio.get_running_loop()
                stalled_at = loop.time()
                await _sleep(self.request, fault.stall_s)
                # Shift the schedule so the stream resumes at its normal pace.
                self.t0 += loop.time() - stalled_at
                await self._emit_until(total)
            tail = [] if plan.rich is not None else [self.enc.finish(plan.finish_reason,
                                                                      plan.usage)]
            if plan.include_usage and plan.rich is None:
                tail.append(self.enc.usage(plan.usage))
            tail.append(DONE)
            await self._finish(tail)
            rec.finish_reason = plan.finish_reason
            rec.finish("completed")
        except ConnectionError:
            # Write to a closed transport or our own poll: the client went away.
            _client_gone(rec)
        except asyncio.CancelledError:
            # handler_cancellation: aiohttp cancels us the moment the peer disconnects.
            _client_gone(rec)
            raise
        return resp


async def _identify(request: web.Request, response: web.StreamResponse) -> None:
    # On every answer, errors and 401s included: Sluice's edge asks without a key.
    response.headers[MOCK_HEADER] = "mockai"


def create_app(settings: MockSettings | None = None) -> web.Application:
    app = web.Application(client_max_size=CLIENT_MAX_SIZE,
                          middlewares=[http_metrics.middleware("mockai")])
    app.on_response_prepare.append(_identify)
    settings = settings if settings is not None else MockSettings()
    app[SETTINGS_KEY] = settings
    app[STATE_KEY] = MockState(Limiter(settings.limits))
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/chat/completions", chat_completions)
    app.router.add_get("/mock/requests", mock_requests)
    app.router.add_post("/mock/reset", mock_reset)
    outage.install(app, settings.fail_status)
    return app

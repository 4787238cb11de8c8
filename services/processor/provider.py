"""Calling the model provider: one streamed chat completion, parsed as it arrives.

The stream is read in whatever pieces the socket gives; every piece's deltas are handed on in
one call, so a fast provider costs one Redis round trip per network read, not per token. The
call says whether the answer is complete with that piece (``last``): its deltas may then wait
and go with the answer itself, one round trip less (a whole short answer often comes in one
read). A
provider that answers JSON to a streaming request is used as is and remembered as not streaming.
A 200 is a success only if it carries an answer (see the assembler), and no line of a stream may
grow past ``AI_MAX_LINE_BYTES``.

The call goes through aiohttp's client directly: one HTTP layer. httpx over an aiohttp
transport (what this was) paid for both, its request and response objects, header copies and
byte streams on top of aiohttp's reads, for nothing the provider call needs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from services.processor.assembler import (
    NO_STATUS,
    ChoiceResult,
    ChoiceText,
    Delta,
    ProviderError,
    StreamAssembler,
    Usage,
    assemble_answer,
    parse_error_body,
)
from services.processor.netfail import connection_failure
from services.processor.sse import SSEDecoder, SSELineTooLong
from shared.config import Provider, redact

OnDeltas = Callable[[list[Delta], bool], Awaitable[None]]  # (deltas, last)
OnHeaders = Callable[[CIMultiDictProxy[str]], None]
DRAIN_AFTER_DONE_S = 1.0
# An error body is read only for its message: the rest of a huge one is left unread.
MAX_ERROR_BODY_BYTES = 64 * 1024
# A non-streamed answer holds the whole completion in one JSON value, so it may be far longer
# than one line of a stream; this many lines' worth (32 MiB by default) bounds it all the same.
JSON_BODY_LINES = 32


@dataclass(slots=True)
class Completion:
    result: ChoiceResult  # choice 0
    usage: Usage | None
    streamed: bool
    choices: dict[int, ChoiceResult] = field(default_factory=dict)  # every choice, by index
    system_fingerprint: str | None = None


class ProviderClient:
    """The process's one client for the provider: pooled keep-alive connections, explicit
    timeouts. ``connect`` bounds opening a connection, ``idle`` the longest silence between two
    reads (AI_IDLE_TIMEOUT_S); waiting for a pooled connection is not bounded (the call's
    overall AI_TIMEOUT_S is)."""

    def __init__(self, settings: Provider, max_connections: int, connect_s: float = 10.0,
                 headers: dict[str, str] | None = None) -> None:
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=connect_s,
                                              sock_read=settings.ai_idle_timeout_s)
        self._headers = {**(headers or {}),  # a provider's own (PROVIDERS_FILE)
                         "Accept": "text/event-stream, application/json",
                         "Content-Type": "application/json"}
        if settings.ai_api_key is not None:
            self._headers["Authorization"] = f"Bearer {settings.ai_api_key.get()}"
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # created lazily: it must belong to the running loop
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers,
                                                  timeout=self._timeout)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> ProviderClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


def make_client(settings: Provider, max_connections: int) -> ProviderClient:
    return ProviderClient(settings, max_connections)


# The request's members Sluice keeps to itself; ``stream`` and ``stream_options`` are set anew.
# "responses": a /v1/responses task's context (its items, what the response object echoes).
OWNED = frozenset({"deadline", "priority", "provider_options", "stream", "stream_options",
                   "prompt", "responses"})


def request_body(payload: dict[str, Any], settings: Provider) -> bytes:
    """The provider's request: the client's, less what Sluice owns, every other member as the
    client sent it; then ``provider_options``, AI_EXTRA_BODY's members the request did not
    set, AI_DROP_PARAMS removed. Always streamed, with usage asked for (a provider that still
    reports none leaves it null: see the runner)."""
    body = {k: v for k, v in payload.items() if k not in OWNED}
    options = payload.get("provider_options")
    if options:
        body.update(options)
    if settings.extra_body is not None:
        for key, value in settings.extra_body.get().items():
            body.setdefault(key, value)
    if not settings.forward_metadata:
        body.pop("metadata", None)  # ours, not the provider's: real providers may reject it
    given = payload.get("stream_options")
    body["stream"] = True
    body["stream_options"] = ({**given, "include_usage": True} if isinstance(given, dict)
                              else {"include_usage": True})
    for name in settings.drop_params:
        body.pop(name, None)
    return orjson.dumps(body)


async def complete(client: ProviderClient, settings: Provider, payload: dict[str, Any],
                   on_deltas: OnDeltas, on_headers: OnHeaders | None = None,
                   answer: ChoiceText | None = None) -> Completion:
    """One attempt. Raises ProviderError for anything the provider did wrong. ``on_headers``
    sees the answer's headers as soon as they arrive (rate-limit headers pace other calls).
    ``answer`` gets choice 0's text before its deltas are handed on (the caller's copy of the
    answer so far, kept once: see ChoiceText)."""
    url = f"{settings.ai_base_url.get()}/chat/completions"
    try:
        async with asyncio.timeout(settings.ai_timeout_s):
            # The response, not post()'s context manager: that one keeps the finished request
            # coroutine (its frame, ~0.9 KB) for as long as the answer streams.
            resp = await client.session().post(url, data=request_body(payload, settings),
                                               allow_redirects=False)
            async with resp:
                if on_headers is not None:
                    on_headers(resp.headers)
                if resp.status >= 400:
                    body, _ = await read_capped(resp.content.iter_any(), MAX_ERROR_BODY_BYTES)
                    raise parse_error_body(resp.status, body, resp.headers.get("retry-after"))
                content_type = resp.headers.get("content-type", "")
                if "text/event-stream" in content_type:
                    return await _from_stream(resp, on_deltas, settings.ai_max_line_bytes,
                                              answer)
                head = b"" if "json" in content_type else await _sniff(resp.content.readany)
                if is_sse(head):
                    return await _from_stream(resp, on_deltas, settings.ai_max_line_bytes,
                                              answer, _chain(head, resp.content.iter_any()))
                limit = settings.ai_max_line_bytes * JSON_BODY_LINES
                body, whole = await read_capped(_chain(head, resp.content.iter_any()), limit)
                if not whole:
                    raise ProviderError(f"a JSON answer exceeded {limit} bytes",
                                        status=NO_STATUS, code="body_too_large",
                                        retryable=True)
                return await _from_json(body, on_deltas, answer)
    except ProviderError as err:
        # Its message reaches clients and /api/ai-status as the provider wrote it, and a
        # provider may quote what it was sent (OpenAI echoes a wrong key): never our key.
        key = settings.ai_api_key
        err.message = redact(err.message, None if key is None else key.get())
        err.args = (err.message,)
        raise
    except SSELineTooLong as exc:
        raise ProviderError(f"{exc}: the stream is broken or hostile", status=NO_STATUS,
                            code="line_too_long", retryable=True) from None
    except aiohttp.ServerTimeoutError as exc:  # a TimeoutError too: before the next clause
        raise ProviderError(f"provider stalled: {type(exc).__name__}", code="idle_timeout",
                            retryable=True) from None
    except TimeoutError:
        raise ProviderError(f"no complete answer within {settings.ai_timeout_s:g} s",
                            code="timeout", retryable=True) from None
    except aiohttp.ClientError as exc:
        raise ProviderError(connection_failure(exc, url), code="connection_error",
                            retryable=True) from None


# A body under another content type is a stream when it starts as one: the fields of SSE, or
# a comment (a keep-alive). The OpenAI SDKs (Python's Stream, Node's) parse a streamed answer
# as SSE whatever its content type, and proxies label streams text/plain or
# application/octet-stream (a default_type, a gateway that does not know SSE): read as JSON,
# such a stream failed as invalid_answer after MAX_ATTEMPTS full calls.
_SSE_STARTS = (b"data:", b"event:", b"id:", b"retry:", b":")
SNIFF_BYTES = 4096  # read at most this much to find the body's first bytes past blank space


async def _sniff(read: Callable[[], Awaitable[bytes]]) -> bytes:
    """The body's first reads (``read``: the next one, b"" at its end): enough to see how it
    starts, or all of it when shorter."""
    head = b""
    while len(head.lstrip()) < len(b"event:") and len(head) < SNIFF_BYTES:
        chunk = await read()
        if not chunk:
            break
        head += chunk
    return head


def is_sse(head: bytes) -> bool:
    return head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(_SSE_STARTS)


async def _chain(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if head:
        yield head
    async for chunk in rest:
        yield chunk


async def _from_stream(resp: aiohttp.ClientResponse, on_deltas: OnDeltas,
                       max_line_bytes: int, answer: ChoiceText | None,
                       chunks: AsyncIterator[bytes] | None = None) -> Completion:
    """``chunks``: the body's reads when some were taken already (by :func:`_sniff`)."""
    decoder, assembler = SSEDecoder(max_line_bytes), StreamAssembler(answer)
    chunks = resp.content.iter_any() if chunks is None else chunks
    async for raw in chunks:
        deltas: list[Delta] = []
        for event in decoder.feed_data(raw):
            deltas += (assembler.add_data(event) if type(event) is bytes
                       else assembler.add_event(event))  # type: ignore[arg-type]
        if deltas:
            await on_deltas(_merge(deltas), assembler.done or assembler.finished)
        if assembler.done:
            break
    decoder.close()
    if assembler.done and not resp.content.at_eof():
        await _drain(chunks)  # at EOF (the body's end came with [DONE]) nothing is left
    # A stream may end without [DONE] (some relays never send it): a finish_reason is the
    # provider's own word that the answer is complete.
    if not (assembler.done or assembler.finished):
        raise ProviderError("the stream ended before the answer was complete",
                            code="stream_cut", retryable=True)
    result = assembler.final()
    choices = assembler.choices if assembler.choice_count > 1 else {0: result}
    return Completion(result, assembler.usage, streamed=True, choices=choices,
                      system_fingerprint=assembler.system_fingerprint)


async def read_capped(chunks: AsyncIterator[bytes], limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of a body (its reads), and whether that was all of it. Reading
    stops at the limit, so a body that never ends costs ``limit`` bytes, not memory without
    bound."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(parts)[:limit], False
    return b"".join(parts), True


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what follows [DONE] (usually just the end of the body) so the connection goes back
    to the pool; a provider that keeps it open after [DONE] is not waited for long."""
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(DRAIN_AFTER_DONE_S):
            async for _ in chunks:
                pass


async def _from_json(body: bytes, on_deltas: OnDeltas, answer: ChoiceText | None
                     ) -> Completion:
    choices, usage, fingerprint = assemble_answer(body)  # raises unless choice 0 is an answer
    result = choices[0]
    deltas = [d for d in (Delta("reasoning", result.reasoning), Delta("content", result.content),
                          Delta("refusal", result.refusal)) if d.text]
    deltas += [Delta("choice", orjson.dumps(relay).decode())
               for c in choices.values() if (relay := whole_delta(c)) is not None]
    if answer is not None:
        for d in deltas:
            getattr(answer, d.kind).add(d.text)
    if deltas:
        await on_deltas(deltas, True)
    return Completion(result, usage, streamed=False, choices=choices,
                      system_fingerprint=fingerprint)


def whole_delta(c: ChoiceResult) -> dict[str, Any] | None:
    """A choice of a JSON answer as one relayed choice delta (see ``Delta``): choice 0's tool
    calls and logprobs, every other choice whole. None: nothing beyond choice 0's text."""
    delta: dict[str, Any] = {}
    if c.index != 0:
        for name, text in (("reasoning_content", c.reasoning), ("content", c.content),
                           ("refusal", c.refusal)):
            if text:
                delta[name] = text
    if c.tool_calls:
        delta["tool_calls"] = [
            {"index": k, **({"id": t.id} if t.id else {}), "type": t.type or "function",
             "function": {"name": t.name, "arguments": t.arguments}}
            for k, t in enumerate(c.tool_calls)]
    if not delta and c.logprobs is None:
        return None
    return {"index": c.index, "delta": delta, "logprobs": c.logprobs}


def _merge(deltas: list[Delta]) -> list[Delta]:
    """Join consecutive deltas of one kind: one event per kind per network read. Each run is
    joined once (adding its texts pairwise made a new string and Delta per delta)."""
    if len(deltas) < 2:
        return deltas
    out: list[Delta] = []
    kind, texts = deltas[0].kind, [deltas[0].text]
    for d in deltas[1:]:
        if d.kind == kind and kind != "choice":  # a choice delta is one JSON value each
            texts.append(d.text)
        else:
            out.append(Delta(kind, "".join(texts)))
            kind, texts = d.kind, [d.text]
    out.append(Delta(kind, "".join(texts)))
    return out

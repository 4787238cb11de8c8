"""Reading a request body into JSON, or a clear 4xx: too slow (408), too large (413), compressed
when that is not allowed (415), not JSON (400), or JSON the rest of Sluice cannot carry (422).

Compressed bodies: aiohttp's own inflation is off (``create_app``), because it runs as the bytes
arrive, on the event loop, before any handler: a 1 MB gzip bomb unpacks to 1 GB there whether or
not the request carries a key. So a ``Content-Encoding`` other than ``identity`` is refused with
415, unless ``EDGE_ALLOW_COMPRESSED_BODIES`` is on; then gzip and deflate are inflated here, in
the handler (after authentication), in steps of at most ``STEP`` bytes of output with the event
loop served between steps, and ``MAX_BODY_BYTES`` counts the inflated bytes.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from typing import Any

import orjson
from aiohttp import web

from services.edge.plumbing.errors import ApiError
from services.edge.settings import EdgeSettings

STEP = 65_536
# orjson reads a wider integer as a float, silently changing it: such metadata is refused.
INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1
_LONG_DIGITS = re.compile(rb"[0-9]{19,}")  # shorter integers always fit in 64 bits
_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the body is larger than {max_bytes} bytes")


async def read_json(request: web.Request, settings: EdgeSettings) -> Any:
    """The body as JSON, refusing anything larger than ``MAX_BODY_BYTES`` before buffering it,
    and any body that has not arrived within ``EDGE_BODY_TIMEOUT_S``."""
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    wbits = _coding(request, settings.allow_compressed_bodies)
    max_bytes = settings.max_body_bytes
    if wbits is None and request.content.is_eof():
        # Arrived whole with the headers (a small body, the common case): nothing to time.
        return loads(await _read(request, max_bytes))
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            if wbits is None:
                body = await _read(request, max_bytes)
            else:
                body = await _inflate(request, wbits, max_bytes)
    except TimeoutError:
        raise ApiError(408, "body_timeout", f"the body did not arrive within "
                       f"{settings.body_timeout_s:g} s") from None
    except OSError as exc:  # only the client's socket is read here: it hung up mid-body
        raise ConnectionResetError(f"the client left while sending its body: {exc}") from exc
    return loads(body)


def _coding(request: web.Request, allowed: bool) -> int | None:
    """zlib's ``wbits`` for the body's Content-Encoding; None for an uncompressed body."""
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding in ("", "identity"):
        return None
    if not allowed:
        raise ApiError(415, "unsupported_content_encoding",
                       "compressed request bodies are not accepted: send the body without "
                       "Content-Encoding")
    wbits = _CODINGS.get(coding)
    if wbits is None:
        raise ApiError(415, "unsupported_content_encoding",
                       "Content-Encoding: only gzip or deflate (one of them, once)")
    return wbits


async def _read(request: web.Request, max_bytes: int) -> bytes:
    length = request.content_length
    if length is not None and length > max_bytes:
        raise _too_large(max_bytes)
    if length is not None:  # known and within the limit: one read, the common case
        try:
            return await request.content.readexactly(length)
        except asyncio.IncompleteReadError:
            raise ApiError(400, "incomplete_body", "the body ended before Content-Length") \
                from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(STEP):
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


async def _inflate(request: web.Request, wbits: int, max_bytes: int) -> bytes:
    """Inflate as the body arrives, at most ``STEP`` bytes per step, yielding to the loop
    between steps; both the compressed and the inflated size count against ``max_bytes``."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise _too_large(max_bytes)
    inflater = zlib.decompressobj(wbits)
    out: list[bytes] = []
    received = size = 0
    async for chunk in request.content.iter_chunked(STEP):
        received += len(chunk)
        if received > max_bytes:
            raise _too_large(max_bytes)
        data = chunk
        while data:
            if inflater.eof:
                raise _bad_coding("data after the end of the compressed stream")
            try:
                piece = inflater.decompress(data, STEP)
            except zlib.error:
                raise _bad_coding("the body is not valid for its Content-Encoding") from None
            size += len(piece)
            if size > max_bytes:
                raise _too_large(max_bytes)
            out.append(piece)
            data = inflater.unconsumed_tail
            await asyncio.sleep(0)  # one bounded step at a time: other requests go on
        if inflater.unused_data:
            raise _bad_coding("data after the end of the compressed stream")
    if not inflater.eof:
        raise _bad_coding("the compressed body ended early")
    return b"".join(out)


def _bad_coding(message: str) -> ApiError:
    return ApiError(400, "invalid_content_encoding", message)


def loads(body: bytes) -> Any:
    """The body as JSON. ``metadata`` is the one free-form member Sluice keeps: an integer
    beyond 64 bits there is refused (orjson would read it as a float, silently changing it,
    and cannot write it back). Members that are dropped are not looked at."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        _refuse_wide_ints(body)  # orjson refuses an integer beyond a double's range outright
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if isinstance(value, dict) and isinstance(value.get("metadata"), dict | list):
        _refuse_wide_ints(body)
    return value


def _refuse_wide_ints(body: bytes) -> None:
    if not _LONG_DIGITS.search(body):
        return  # the common case: no integer can be wide
    try:  # rare: read it again, exactly, to find a wide integer
        exact = json.loads(body, parse_int=_exact_int)
    except (ValueError, RecursionError):
        return  # not JSON to the standard library either: the caller's answer stands
    wide = _wide_int(exact.get("metadata"), "metadata") if isinstance(exact, dict) else None
    if wide is not None:
        raise ApiError(422, "invalid_request", f"{wide}: an integer beyond 64 bits (from "
                       f"{INT_MIN} to {INT_MAX}) would not be kept exactly", param=wide)


class _Wide:
    """Stands for an integer beyond 64 bits in the exact second reading."""


WIDE = _Wide()


def _exact_int(text: str) -> int | _Wide:
    # Length first: Python refuses to convert more than 4300 digits, and none of them fit.
    if len(text) > 21:
        return WIDE
    number = int(text)
    return number if INT_MIN <= number <= INT_MAX else WIDE


def _wide_int(value: Any, path: str) -> str | None:
    """The path (``metadata.a[2]``) of the first wide integer, or None; ``value`` is nested
    at most ``MAX_METADATA_DEPTH`` deep or refused for that before it is stored."""
    stack = [(value, path)]
    while stack:
        node, where = stack.pop()
        if node is WIDE:
            return where
        if isinstance(node, dict):
            stack.extend((item, f"{where}.{key}") for key, item in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((item, f"{where}[{i}]") for i, item in reversed(list(enumerate(node))))
    return None

"""OpenAI's Files API for batches: ``/v1/files`` upload, list, get, content, delete.

A file belongs to the tenant that uploaded it (another tenant gets a 404, as for an id that
never existed) and lives in the store, so any edge serves it after any restart.

An upload is streamed: each part of the multipart body is written to the store as soon as a
store part (1 MiB) of it has arrived, its lines are counted as they pass, and it is refused as
soon as it passes ``BATCH_MAX_FILE_BYTES`` or ``BATCH_MAX_FILE_LINES``: the edge holds about one
part per upload, whatever the file's size. ``BATCH_UPLOADS_PER_TENANT`` and
``BATCH_UPLOADS_PER_EDGE`` bound the uploads in progress (429 beyond), and
``BATCH_UPLOAD_TIMEOUT_S`` how long one may take (408), so slow uploads cannot hold the slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from services.edge.context import edge_of
from services.edge.openai.batch.settings import BatchApiSettings
from services.edge.openai.batch.store import PART_BYTES, BatchStore, FileMeta
from services.edge.plumbing.auth import tenant_of
from services.edge.plumbing.errors import ApiError
from services.edge.plumbing.replies import json_response
from shared import logs

log = logs.get("sluice.batches")
INPUT_PURPOSE, OUTPUT_PURPOSE = "batch", "batch_output"
MAX_LIST = 10_000
READ_BYTES = 1 << 16  # what one read of the body takes from the socket at most
UPLOAD_RETRY_S = 1
_BLANK = b" \t\r\x0b\x0c"  # with b"\n": what bytes.strip() removes


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def file_object(meta: FileMeta) -> dict[str, Any]:
    """OpenAI's file object (``status`` is deprecated there but its SDK still expects it)."""
    return {"id": meta.id, "object": "file", "bytes": meta.bytes, "created_at": meta.created_at,
            "filename": meta.filename, "purpose": meta.purpose, "expires_at": meta.expires_at,
            "status": "processed", "status_details": None}


def batch_store(request: web.Request) -> BatchStore:
    return BatchStore(edge_of(request).store)


# --- how many uploads run at once ----------------------------------------------------------------
@dataclass
class UploadSlots:
    """Uploads in progress on this edge replica, by tenant. One event loop touches it, so a
    check and its count are one step (no await between them)."""

    per_edge: int
    per_tenant: int
    by_tenant: Counter[str] = field(default_factory=Counter)

    @contextlib.contextmanager
    def take(self, tenant: str) -> Iterator[None]:
        if self.by_tenant[tenant] >= self.per_tenant:
            raise _busy(f"this key may upload {self.per_tenant} files at once")
        if self.by_tenant.total() >= self.per_edge:
            raise _busy(f"this server takes {self.per_edge} uploads at once")
        self.by_tenant[tenant] += 1
        try:
            yield
        finally:
            self.by_tenant[tenant] -= 1
            if not self.by_tenant[tenant]:
                del self.by_tenant[tenant]


UPLOADS = web.AppKey("uploads", UploadSlots)


def upload_slots(settings: BatchApiSettings) -> UploadSlots:
    return UploadSlots(settings.uploads_per_edge, settings.uploads_per_tenant)


def _busy(message: str) -> ApiError:
    return ApiError(429, "too_many_uploads", f"{message}: retry when one has finished",
                    headers={"Retry-After": str(UPLOAD_RETRY_S)})


# --- the streamed upload -------------------------------------------------------------------------
class LineCounter:
    """Counts the non-blank lines of a stream of chunks (a line may span chunks), as
    ``sum(1 for line in content.split(b"\\n") if line.strip())`` counts them whole."""

    def __init__(self) -> None:
        self.lines = 0
        self._filled = False  # the current line has a byte other than blanks

    def feed(self, chunk: bytes) -> int:
        *ended, rest = chunk.split(b"\n")
        for piece in ended:
            if self._filled or piece.strip(_BLANK):
                self.lines += 1
            self._filled = False
        self._filled = self._filled or bool(rest.strip(_BLANK))
        return self.lines

    def end(self) -> int:
        if self._filled:
            self.lines += 1
            self._filled = False
        return self.lines


@dataclass
class Upload:
    """One file arriving: parts are written to the store as they fill."""

    store: BatchStore
    meta: FileMeta
    limits: BatchApiSettings
    size: int = 0
    parts: int = 0
    lines: LineCounter = field(default_factory=LineCounter)
    buffer: bytearray = field(default_factory=bytearray)

    async def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limits.max_file_bytes:
            raise ApiError(413, "file_too_large",
                           f"the file is larger than {self.limits.max_file_bytes} bytes",
                           param="file")
        if self.lines.feed(chunk) > self.limits.max_file_lines:
            raise _too_many_lines(self.limits.max_file_lines)
        self.buffer += chunk
        while len(self.buffer) >= PART_BYTES:
            await self._flush(PART_BYTES)

    async def _flush(self, size: int) -> None:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        await self.store.save_part(self.meta.id, self.parts, data)
        self.parts += 1

    async def end(self) -> int:
        """Write what is left; the file's line count."""
        if self.lines.end() > self.limits.max_file_lines:
            raise _too_many_lines(self.limits.max_file_lines)
        if self.buffer:
            await self._flush(len(self.buffer))
        return self.lines.lines


def _too_many_lines(most: int) -> ApiError:
    return ApiError(400, "too_many_lines", f"the file has more than {most} requests",
                    param="file")


async def _read_form(request: web.Request, upload: Upload) -> tuple[str | None, str, bool]:
    """The form's purpose and filename, and whether it had a file (streamed into ``upload``)."""
    purpose, filename, seen = None, "", False
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise ApiError(400, "invalid_request", "nested multipart is not supported")
        if part.name == "purpose":
            purpose = (await part.text()).strip()
        elif part.name == "file" and not seen:
            filename, seen = part.filename or "upload.jsonl", True
            while chunk := await part.read_chunk(READ_BYTES):
                await upload.feed(chunk)
        else:  # strict, as POST /api/tasks: a misspelt field is an error, not ignored
            raise ApiError(400, "invalid_request",
                           "unknown form field (send purpose and file, once each)")
    return purpose, filename, seen


async def upload(request: web.Request) -> web.Response:
    edge = edge_of(request)
    limits = edge.settings.batch_api
    if not request.content_type.startswith("multipart/"):
        raise ApiError(415, "unsupported_media_type", "send the file as multipart/form-data")
    tenant = tenant_of(request)
    with request.app[UPLOADS].take(tenant):
        store = batch_store(request)
        meta = FileMeta(new_file_id(), tenant, INPUT_PURPOSE, "", 0, 0, int(time.time()), None)
        await store.begin_upload(meta)
        try:
            async with asyncio.timeout(limits.upload_timeout_s):
                meta = await _receive(request, Upload(store, meta, limits))
        except BaseException as exc:
            # Shielded: a client that hangs up may cancel this handler, and the parts must go.
            # A store that fails here too leaves them to the runner's sweep_uploads.
            with contextlib.suppress(Exception):
                await asyncio.shield(store.abandon_upload(meta.id))
            if isinstance(exc, TimeoutError):
                raise ApiError(408, "body_timeout", "the file did not arrive within "
                               f"{limits.upload_timeout_s:g} s") from None
            raise
    log.info("file_uploaded", file_id=meta.id, bytes=meta.bytes, lines=meta.lines)
    return json_response(file_object(meta))


async def _receive(request: web.Request, upload: Upload) -> FileMeta:
    try:
        purpose, filename, seen = await _read_form(request, upload)
    except ApiError:
        raise
    except OSError as exc:  # the client's socket: it hung up mid-body
        raise ConnectionResetError(f"the client left while sending its file: {exc}") from exc
    except Exception:  # aiohttp's multipart parser raises several kinds on a malformed body
        raise ApiError(400, "invalid_request", "the body is not valid multipart/form-data") \
            from None
    if purpose != INPUT_PURPOSE:
        raise ApiError(400, "invalid_request", "purpose: only 'batch' files are accepted",
                       param="purpose")
    if not seen:
        raise ApiError(400, "invalid_request", "file: required", param="file")
    lines = await upload.end()
    m = upload.meta
    meta = FileMeta(m.id, m.tenant, INPUT_PURPOSE, filename[:255], upload.size, lines,
                    m.created_at, None)
    await upload.store.end_upload(meta, upload.parts)
    return meta


async def owned_file(request: web.Request) -> FileMeta:
    file_id = request.match_info["id"]
    meta = await batch_store(request).get_file(tenant_of(request), file_id)
    if meta is None:
        raise ApiError(404, "not_found", "no such file", param="file_id")
    return meta


def page_limit(request: web.Request, default: int, most: int) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        raise ApiError(400, "invalid_request", f"limit: an integer from 1 to {most}",
                       param="limit")
    return value


async def list_files(request: web.Request) -> web.Response:
    limit = page_limit(request, MAX_LIST, MAX_LIST)
    files = await batch_store(request).list_files(
        tenant_of(request), request.query.get("purpose"), request.query.get("after"),
        limit + 1)
    return json_response(page([file_object(f) for f in files], limit))


def page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """OpenAI's list envelope from ``limit + 1`` items fetched (the extra one says more)."""
    shown = items[:limit]
    return {"object": "list", "data": shown, "has_more": len(items) > limit,
            "first_id": shown[0]["id"] if shown else None,
            "last_id": shown[-1]["id"] if shown else None}


async def get_file(request: web.Request) -> web.Response:
    return json_response(file_object(await owned_file(request)))


async def file_content(request: web.Request) -> web.StreamResponse:
    """The content, a store part at a time: a reader holds one part, not the file."""
    meta = await owned_file(request)
    response = web.StreamResponse(headers={"Content-Type": "application/jsonl"})
    response.content_length = meta.bytes
    await response.prepare(request)
    async for part in batch_store(request).file_parts(meta.id):
        await response.write(part)
    await response.write_eof()
    return response


async def delete_file(request: web.Request) -> web.Response:
    meta = await owned_file(request)
    await batch_store(request).delete_file(meta.tenant, meta.id)
    return json_response({"id": meta.id, "object": "file", "deleted": True})

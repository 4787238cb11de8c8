"""OpenAI's Files API for batches: ``/v1/files`` upload, list, get, content, delete.

A file belongs to the tenant that uploaded it (another tenant gets a 404, as for an id that
never existed) and lives in the store, so any edge serves it after any restart. Uploads are
read part by part and refused as soon as they pass ``BATCH_MAX_FILE_BYTES``.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from aiohttp import BodyPartReader, web

from services.edge.context import edge_of
from services.edge.openai.batch.store import BatchStore, FileMeta
from services.edge.plumbing.auth import tenant_of
from services.edge.plumbing.errors import ApiError
from services.edge.tasks.views import json_response

INPUT_PURPOSE, OUTPUT_PURPOSE = "batch", "batch_output"
MAX_LIST = 10_000


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def file_object(meta: FileMeta) -> dict[str, Any]:
    """OpenAI's file object (``status`` is deprecated there but its SDK still expects it)."""
    return {"id": meta.id, "object": "file", "bytes": meta.bytes, "created_at": meta.created_at,
            "filename": meta.filename, "purpose": meta.purpose, "expires_at": meta.expires_at,
            "status": "processed", "status_details": None}


def count_lines(content: bytes) -> int:
    return sum(1 for line in content.split(b"\n") if line.strip())


def batch_store(request: web.Request) -> BatchStore:
    return BatchStore(edge_of(request).store)


async def _read_limited(part: BodyPartReader, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(1 << 16):
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "file_too_large", f"the file is larger than {max_bytes} bytes",
                           param="file")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_form(request: web.Request, max_bytes: int
                     ) -> tuple[str | None, str, bytes | None]:
    purpose, filename, content = None, "", None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise ApiError(400, "invalid_request", "nested multipart is not supported")
        if part.name == "purpose":
            purpose = (await part.text()).strip()
        elif part.name == "file":
            filename = part.filename or "upload.jsonl"
            content = await _read_limited(part, max_bytes)
        else:  # strict, as POST /api/tasks: a misspelt field is an error, not ignored
            raise ApiError(400, "invalid_request", "unknown form field (send purpose and file)")
    return purpose, filename, content


async def upload(request: web.Request) -> web.Response:
    limits = edge_of(request).settings.batch_api
    if not request.content_type.startswith("multipart/"):
        raise ApiError(415, "unsupported_media_type", "send the file as multipart/form-data")
    try:
        purpose, filename, content = await _read_form(request, limits.max_file_bytes)
    except ApiError:
        raise
    except Exception:  # aiohttp's multipart parser raises several kinds on a malformed body
        raise ApiError(400, "invalid_request", "the body is not valid multipart/form-data") \
            from None
    if purpose != INPUT_PURPOSE:
        raise ApiError(400, "invalid_request", "purpose: only 'batch' files are accepted",
                       param="purpose")
    if content is None:
        raise ApiError(400, "invalid_request", "file: required", param="file")
    lines = count_lines(content)
    if lines > limits.max_file_lines:
        raise ApiError(400, "too_many_lines",
                       f"the file has {lines} requests, more than {limits.max_file_lines}",
                       param="file")
    meta = FileMeta(new_file_id(), tenant_of(request), INPUT_PURPOSE, filename[:255],
                    len(content), lines, int(time.time()), None)
    await batch_store(request).save_file(meta, content)
    return json_response(file_object(meta))


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


async def file_content(request: web.Request) -> web.Response:
    meta = await owned_file(request)
    body = await batch_store(request).file_content(meta.id)
    return web.Response(body=body, content_type="application/jsonl")


async def delete_file(request: web.Request) -> web.Response:
    meta = await owned_file(request)
    await batch_store(request).delete_file(meta.tenant, meta.id)
    return json_response({"id": meta.id, "object": "file", "deleted": True})

"""OpenAI's Batches API: ``/v1/batches`` create, get, cancel and list. Thin views: a batch is
created ``validating``, and the batch runner (``batch_runner``) does the rest."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from services.edge.context import edge_of
from services.edge.openai.batch import batches as b
from services.edge.openai.batch.files import INPUT_PURPOSE, batch_store, page, page_limit
from services.edge.openai.batch.store import BatchRecord
from services.edge.plumbing.auth import tenant_of
from services.edge.plumbing.bodies import read_json
from services.edge.plumbing.errors import ApiError
from services.edge.plumbing.replies import json_response


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, "invalid_request", f"{param}: {message}", param=param)


def _metadata(value: Any) -> dict[str, str] | None:
    """OpenAI's rule: at most 16 pairs, keys up to 64 and values up to 512 characters."""
    if value is None:
        return None
    if (not isinstance(value, dict) or len(value) > 16
            or not all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str)
                       and len(v) <= 512 for k, v in value.items())):
        raise _bad("metadata", "at most 16 string pairs, keys up to 64 and values up to 512 "
                   "characters")
    return value


async def create(request: web.Request) -> web.Response:
    edge = edge_of(request)
    body = await read_json(request, edge.settings)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    endpoint = body.get("endpoint")
    if endpoint not in b.ENDPOINTS:
        raise _bad("endpoint", "only " + " and ".join(b.ENDPOINTS) + " are supported")
    if body.get("completion_window") != b.WINDOW:
        raise _bad("completion_window", f"only {b.WINDOW!r} is supported")
    metadata = _metadata(body.get("metadata"))
    file_id = body.get("input_file_id")
    tenant = tenant_of(request)
    store = batch_store(request)
    meta = await store.get_file(tenant, file_id) if isinstance(file_id, str) else None
    if meta is None or meta.purpose != INPUT_PURPOSE:
        raise ApiError(404 if meta is None else 400, "invalid_request",
                       "input_file_id: no such file of purpose 'batch'", param="input_file_id")
    batch_id = b.new_batch_id()
    doc = b.new_batch(batch_id, meta.id, metadata, int(time.time()),
                      edge.settings.batch_api.completion_window_s, str(endpoint))
    await store.create_batch(BatchRecord(batch_id, tenant, b.VALIDATING, 0, doc),
                             time.time_ns() // 1000)
    return json_response(doc)


async def owned(request: web.Request) -> BatchRecord:
    batch_id = request.match_info["id"]
    record = await batch_store(request).get_batch(batch_id)
    if record is None or record.tenant != tenant_of(request):
        raise ApiError(404, "not_found", "no such batch", param="batch_id")
    return record


async def retrieve(request: web.Request) -> web.Response:
    return json_response((await owned(request)).doc)


async def cancel(request: web.Request) -> web.Response:
    record = await owned(request)
    if record.status in b.CANCELLABLE:
        await batch_store(request).request_cancel(record.tenant, record.id, int(time.time()))
        record = await owned(request)
    if record.status not in (b.CANCELLING, b.CANCELLED):
        raise ApiError(409, "batch_not_cancellable",
                       f"a batch that is {record.status} cannot be cancelled")
    return json_response(record.doc)


async def list_batches(request: web.Request) -> web.Response:
    limit = page_limit(request, 20, 100)
    records = await batch_store(request).list_batches(
        tenant_of(request), request.query.get("after"), limit + 1)
    return json_response(page([r.doc for r in records], limit))

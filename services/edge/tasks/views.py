"""Thin handlers for /api/tasks: parse, call one queue operation, answer JSON."""

from __future__ import annotations

import re

from aiohttp import web

from services.edge.context import TASK_ID_KEY, edge_of
from services.edge.plumbing.auth import tenant_of
from services.edge.plumbing.bodies import read_json
from services.edge.plumbing.errors import ApiError
from services.edge.plumbing.replies import json_response
from services.edge.tasks import service, waiting
from services.edge.tasks.validation import parse_task
from services.edge.webhooks import views as webhooks
from shared import tasks


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if key.startswith(service.INTERNAL_KEY_PREFIX):
        raise ApiError(422, "invalid_request",
                       f"Idempotency-Key: keys starting with {service.INTERNAL_KEY_PREFIX!r} are "
                       "reserved for Sluice's own tasks", param="Idempotency-Key")
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(422, "invalid_request",
                       "Idempotency-Key: 1 to 255 visible ASCII characters (inner spaces allowed)",
                       param="Idempotency-Key")
    return key


# HTTP strips a header value's outer spaces, so what arrives never starts or ends with one; the
# first character is never "~" (service.INTERNAL_KEY_PREFIX, the batch runner's keys). The same
# pattern is in the OpenAPI document.
IDEMPOTENCY_KEY_PATTERN = "^[!-}]([ -~]{0,253}[!-~])?$"
IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


async def create_task(request: web.Request) -> web.Response:
    edge = edge_of(request)
    key = idempotency_key(request)
    body = await read_json(request, edge.settings)
    hook_url = None
    # for Sluice, not for the provider (BATCH_API off: left to the task's validation as before)
    if edge.settings.batch_api_on and isinstance(body, dict) and "webhook_url" in body:
        body = dict(body)
        hook_url = webhooks.checked_url(request, body.pop("webhook_url"), "webhook_url")
    req = parse_task(body, edge.settings)
    if hook_url:
        await webhooks.require_secret(request)
    tenant = tenant_of(request)
    task_id = tasks.new_task_id()
    if hook_url:
        # Before the task exists: a task that finished before its URL was stored would pass
        # the webhook scanner unseen. (A refused or replayed submit leaves a row no task
        # will ever match.)
        await webhooks.remember_task_url(request, task_id, hook_url)
    sub = await service.submit(edge, tenant, req, key, task_id)
    body = service.accepted_body(sub)
    if sub.existing:
        view = await service.read(edge, tenant, sub.id)
        body = {"id": sub.id, "status": view["status"], "created_at": view["created_at"]}
    request[TASK_ID_KEY] = sub.id
    return json_response(body, 202, {"Location": f"/api/tasks/{sub.id}", **sub.headers})


async def get_task(request: web.Request) -> web.Response:
    edge, tenant = edge_of(request), tenant_of(request)
    view = await service.read(edge, tenant, request.match_info["id"])
    return json_response({**view, **await waiting.explain(edge, tenant, view)})


async def cancel_task(request: web.Request) -> web.Response:
    out = await service.cancel(edge_of(request), tenant_of(request), request.match_info["id"])
    return json_response(out, 202 if out["status"] == "cancelling" else 200)

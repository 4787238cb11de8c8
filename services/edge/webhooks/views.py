"""``/api/webhooks``: a tenant's endpoints, its signing secret, test events and deliveries.

A tenant has one signing secret (``whsec_<base64>``), shown once: in the answer that created
it (the tenant's first endpoint) and in the answer of each rotation. After a rotation the
previous secret keeps signing, beside the new one, for WEBHOOK_ROTATION_GRACE_S.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from aiohttp import web

from services.edge.context import edge_of
from services.edge.plumbing.auth import tenant_of
from services.edge.plumbing.bodies import read_json
from services.edge.plumbing.errors import ApiError
from services.edge.plumbing.replies import json_response
from services.edge.webhooks import events, signing, ssrf
from services.edge.webhooks.store import Endpoint, WebhookStore, delivery_statement

MAX_URL = 2048
# The shape a webhook URL must have (also the OpenAPI document's pattern); its address is
# then checked by ``ssrf``.
URL_PATTERN = r"^https?://[A-Za-z0-9._~-]+(:[0-9]{1,5})?(/[!-~]*)?$"
_URL = re.compile(URL_PATTERN)


def hooks(request: web.Request) -> WebhookStore:
    return WebhookStore(edge_of(request).store)


def checked_url(request: web.Request, value: Any, field: str = "url") -> str:
    """A URL webhooks may be sent to (the address is checked again at each connect)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_URL or not _URL.match(value):
        raise ApiError(422, "invalid_request", f"{field}: an http(s) URL of at most {MAX_URL} "
                       "characters", param=field)
    try:
        ssrf.check_url(value, edge_of(request).settings.webhooks.allow_private)
    except ssrf.BlockedAddress as exc:
        raise ApiError(422, "invalid_webhook_url", f"{field}: {exc}", param=field) from None
    return value


def _view(e: Endpoint) -> dict[str, Any]:
    return {"id": e.id, "url": e.url, "events": e.events, "created_at": e.created_at}


async def create_endpoint(request: web.Request) -> web.Response:
    body = await read_json(request, edge_of(request).settings)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    url = checked_url(request, body.get("url"))
    try:
        await ssrf.check_resolved(url, edge_of(request).settings.webhooks)
    except ssrf.BlockedAddress as exc:
        raise ApiError(422, "invalid_webhook_url", f"url: {exc}", param="url") from None
    kinds = body.get("events", list(events.EVENT_TYPES))
    if (not isinstance(kinds, list) or not kinds
            or not all(k in events.EVENT_TYPES for k in kinds)):
        raise ApiError(422, "invalid_request", "events: a non-empty array of "
                       + ", ".join(events.EVENT_TYPES), param="events")
    tenant = tenant_of(request)
    endpoint = Endpoint("we_" + secrets.token_hex(12), tenant, url, sorted(set(kinds)),
                        int(time.time()))
    store = hooks(request)
    secret = signing.new_secret()
    created = await store.create_secret(tenant, secret)
    await store.add_endpoint(endpoint)
    out = _view(endpoint)
    if created:
        out["secret"] = secret  # shown this once
    return json_response(out, 201)


async def list_endpoints(request: web.Request) -> web.Response:
    found = await hooks(request).endpoints(tenant_of(request))
    return json_response({"data": [_view(e) for e in found]})


async def _owned(request: web.Request) -> Endpoint:
    endpoint_id = request.match_info["id"]
    for e in await hooks(request).endpoints(tenant_of(request)):
        if e.id == endpoint_id:
            return e
    raise ApiError(404, "not_found", "no such webhook endpoint")


async def delete_endpoint(request: web.Request) -> web.Response:
    e = await _owned(request)
    await hooks(request).delete_endpoint(e.tenant, e.id)
    return json_response({"id": e.id, "deleted": True})


async def send_test(request: web.Request) -> web.Response:
    e = await _owned(request)
    [d] = events.deliveries(e.tenant, events.TEST_EVENT, e.id, {}, [(e.id, e.url)],
                            nonce=secrets.token_hex(8))
    await hooks(request).enqueue([delivery_statement(d)])
    return json_response({"delivery_id": d.id, "event_type": d.event_type}, 202)


async def rotate_secret(request: web.Request) -> web.Response:
    grace = edge_of(request).settings.webhooks.rotation_grace_s
    secret = signing.new_secret()
    until = int(time.time()) + grace
    await hooks(request).rotate_secret(tenant_of(request), secret, until)
    return json_response({"secret": secret, "previous_valid_until": until})


async def list_deliveries(request: web.Request) -> web.Response:
    e = await _owned(request)
    found = await hooks(request).deliveries(e.tenant, e.id, 100)
    return json_response({"data": found})


async def remember_task_url(request: web.Request, task_id: str, url: str) -> None:
    await hooks(request).save_task_url(task_id, tenant_of(request), url)


async def require_secret(request: web.Request) -> None:
    """A task's webhook_url is signed with its tenant's secret: it must have one."""
    if not await hooks(request).signing_secrets(tenant_of(request), int(time.time())):
        raise ApiError(422, "no_webhook_secret", "webhook_url: this key has no webhook secret "
                       "yet (register an endpoint or rotate the secret first)",
                       param="webhook_url")

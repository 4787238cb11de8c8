"""The webhooks' part of the OpenAPI document: /api/webhooks."""

from __future__ import annotations

from typing import Any

from services.edge.webhooks.events import EVENT_TYPES
from services.edge.webhooks.views import MAX_URL, URL_PATTERN

Schema = dict[str, Any]
REF = "#/components/schemas/"
STR, INT = {"type": "string"}, {"type": "integer"}
URL = {"type": "string", "maxLength": MAX_URL, "pattern": URL_PATTERN,
       "description": "http(s); loopback, private, link-local and metadata addresses are "
                      "refused unless WEBHOOK_ALLOW_PRIVATE=true"}
_WHY = {401: "no valid API key (Authorization: Bearer <key>)",
        404: "no such endpoint for this key",
        413: "the body is too large", 415: "the body is not application/json",
        400: "the body is not valid JSON",
        422: "a field is invalid (or the URL's address is refused): the message names it",
        503: "Redis is unreachable: retry shortly"}


def _errors(*statuses: int) -> dict[str, Schema]:
    return {str(s): {"description": _WHY[s], "content": {"application/json": {
        "schema": {"$ref": REF + "Error"}}}} for s in statuses}


def _ok(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ID = {"name": "id", "in": "path", "required": True, "schema": STR}
_ENDPOINT = {"type": "object", "required": ["id", "url", "events", "created_at"],
             "properties": {"id": STR, "url": STR, "created_at": INT,
                            "events": {"type": "array", "items": {"enum": list(EVENT_TYPES)}},
                            "secret": {"type": "string", "pattern": "^whsec_",
                                       "description": "only in the answer that created it"}}}
_LIST = {"type": "object", "required": ["data"],
         "properties": {"data": {"type": "array", "items": {"type": "object"}}}}


def paths() -> dict[str, Any]:
    create = {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["url"],
        "properties": {"url": URL, "events": {"type": "array", "minItems": 1,
                                              "items": {"enum": list(EVENT_TYPES)}}}}}}}
    return {
        "/api/webhooks": {
            "post": {"operationId": "createWebhook", "summary": "Register a webhook endpoint",
                     "requestBody": create,
                     "responses": {"201": _ok("the endpoint (with the tenant's secret, the "
                                              "first time)", _ENDPOINT),
                                   **_errors(400, 401, 413, 415, 422, 503)}},
            "get": {"operationId": "listWebhooks", "summary": "This key's endpoints",
                    "responses": {"200": _ok("the endpoints", _LIST), **_errors(401, 503)}}},
        "/api/webhook-secret/rotate": {"post": {
            "operationId": "rotateWebhookSecret",
            "summary": "A new signing secret; the old one also signs for a grace period",
            "responses": {"200": _ok("the new secret, shown once", {
                "type": "object", "required": ["secret", "previous_valid_until"],
                "properties": {"secret": STR, "previous_valid_until": INT}}),
                **_errors(401, 503)}}},
        "/api/webhooks/{id}": {"delete": {
            "operationId": "deleteWebhook", "summary": "Remove an endpoint",
            "parameters": [_ID],
            "responses": {"200": _ok("removed", {"type": "object"}), **_errors(401, 404, 503)}}},
        "/api/webhooks/{id}/test": {"post": {
            "operationId": "testWebhook", "summary": "Send a webhook.test event",
            "parameters": [_ID],
            "responses": {"202": _ok("queued", {"type": "object",
                                                "required": ["delivery_id"]}),
                          **_errors(401, 404, 503)}}},
        "/api/webhooks/{id}/deliveries": {"get": {
            "operationId": "webhookDeliveries", "summary": "Deliveries and their attempts",
            "parameters": [_ID],
            "responses": {"200": _ok("newest first", _LIST), **_errors(401, 404, 503)}}},
    }

"""The OpenAPI 3.1 document of the edge, served at ``/api/openapi.json``.

Built from the settings, so the limits it states (body size, message count, text length,
``max_tokens``) are the ones this edge enforces, and security appears only when keys are
configured. The tests keep it true: every route of the app must be documented here and every
operation here must exist (tests/integration/test_openapi_doc.py), and schemathesis checks
every answer against it (tests/e2e/test_schemathesis.py).

The request bodies of POST /api/tasks and POST /v1/chat/completions (TaskRequest,
ChatCompletionRequest and what they name) are not written here: they come from the request
model that validates them (services/edge/tasks/protocol.py, ``components``). The schemas say
exactly what the validators accept, because schemathesis sends data both just inside and just
outside them. Two limits cannot be said in JSON Schema and are only described: the total text
of all messages, and the size of ``metadata`` as JSON.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.edge.context import SETTINGS
from services.edge.openai.batch import openapi as openapi_batches
from services.edge.openai.responses import openapi as openapi_responses
from services.edge.plumbing.replies import json_response
from services.edge.settings import EdgeSettings
from services.edge.tasks import protocol
from services.edge.tasks.validation import PRIORITY_HEADER, PRIORITY_HEADER_PATTERN
from services.edge.tasks.views import IDEMPOTENCY_KEY_PATTERN
from services.edge.webhooks import openapi as webhooks_openapi
from shared import tasks

Schema = dict[str, Any]
REF = "#/components/schemas/"
TASK_ID = "^tsk_[0-9a-f]{32}$"
EVENT_ID = "^(|final|[0-9]{1,19}(-[0-9]{1,19})?)$"  # empty: from the start; 19 digits fit 64 bits


def ref(name: str) -> Schema:
    return {"$ref": REF + name}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(required: list[str], props: dict[str, Schema], **extra: Any) -> Schema:
    return {"type": "object", "required": required, "properties": props, **extra}


STR, INT, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}
TIME_OR_NULL = nullable(TIME)


# --- responses ------------------------------------------------------------------------------
def _error(description: str, openai: bool, headers: dict[str, Any] | None = None) -> Schema:
    out: Schema = {"description": description,
                   "content": {"application/json": {
                       "schema": ref("OpenAIError" if openai else "Error")}}}
    if headers:
        out["headers"] = headers
    return out


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again",
                               "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
_ERRORS = {
    400: "the body is not valid JSON (or, when compressed bodies are allowed, not valid for "
         "its Content-Encoding)",
    401: "no valid API key (Authorization: Bearer <key>)",
    404: "no such task for this key (tasks of other keys' tenants are not found either)",
    408: "`body_timeout`: the body did not arrive within EDGE_BODY_TIMEOUT_S; "
         "`deadline_exceeded` (/v1): the request's deadline passed before the provider had room "
         "for it",
    409: "conflict with the task's state or with an earlier use of the Idempotency-Key",
    413: "the body is larger than MAX_BODY_BYTES",
    415: "the body is not application/json, or is compressed (Content-Encoding) while "
         "EDGE_ALLOW_COMPRESSED_BODIES is off",
    422: "a field is invalid: the message and `field` name it",
    429: "a limit of this key's tenant: submissions per minute or tasks active at once",
    502: "the model provider failed the task (its own error message is passed on)",
    503: "`unavailable`: Redis is unreachable (on a submit, `outcome` says whether the task "
         "may have been stored: `unknown`, or `not_stored`); `queue_full`: Redis is out of "
         "memory and nothing was written. Retry after Retry-After",
}


def errors(*statuses: int, openai: bool = False) -> dict[str, Schema]:
    return {str(s): _error(_ERRORS[s], openai, RETRY_AFTER if s in (429, 503) else None)
            for s in statuses}


def json_ok(description: str, schema: Schema, headers: dict[str, Any] | None = None) -> Schema:
    out: Schema = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


# --- request bodies -------------------------------------------------------------------------
# TaskRequest and ChatCompletionRequest, with every schema they name, come from the request
# model (services/edge/tasks/protocol.py): the same classes validate the bodies.


# --- answers --------------------------------------------------------------------------------
_USAGE = nullable(obj(["prompt_tokens", "completion_tokens", "total_tokens"],
                      {"prompt_tokens": INT, "completion_tokens": INT, "total_tokens": INT}))
_RESULT = obj(["content", "reasoning_content", "finish_reason", "usage"], {
    "content": STR, "reasoning_content": STR, "finish_reason": nullable(STR),
    "usage": _USAGE, "refusal": STR,
    "provider": {"type": "string", "description": "who answered: the provider's name "
                 "(PROVIDERS_FILE; 'default' without it)"},
    "model": {"type": "string", "description": "the model that provider was asked for"}})
_TRY = obj(["provider", "model", "processor", "started_at", "ended_at", "status", "error"], {
    "provider": nullable(STR), "model": nullable(STR), "processor": STR,
    "started_at": TIME_OR_NULL, "ended_at": TIME_OR_NULL,
    "status": {"enum": ["succeeded", "failed", "rate_limited", "stopped", "error"]},
    "error": nullable(obj(["code", "message"], {"code": STR, "message": STR,
                                                "status": nullable(INT)}))})
_TASK = obj(["id", "status", "model", "created_at", "started_at", "completed_at", "batch_id",
             "attempts", "result", "error", "metadata"], {
    "id": {"type": "string", "pattern": TASK_ID},
    "status": {"enum": list(tasks.STATUSES)},
    "model": nullable(STR), "created_at": TIME_OR_NULL, "started_at": TIME_OR_NULL,
    "completed_at": TIME_OR_NULL, "batch_id": nullable(STR), "attempts": INT,
    "result": nullable(ref("TaskResult")),
    "error": nullable(obj(["code", "message"], {"code": STR, "message": STR})),
    "metadata": {"description": "the request's metadata, or null"},
    "tries": {"type": "array", "items": _TRY, "description": "every provider call of the "
              "task, in order: provider, route model, processor, start, end, status, error"},
    "queue_position": nullable({"type": "integer", "minimum": 1, "description":
                                "while it waits: 1 + its tenant's tasks submitted before it "
                                "that have not been sent to the provider yet"}),
    "waiting_for": nullable(obj(["reason", "until"], {
        "reason": {"enum": ["coordinator", "batch_timer", "processor", "provider_capacity",
                            "provider_pause", "provider_quota"]},
        "detail": STR, "until": TIME_OR_NULL}))})
_OUTCOME = {"enum": ["unknown", "not_stored"],
            "description": "a submit's 503: whether the task may have been stored (`unknown`: "
                           "retry with the same Idempotency-Key) or surely was not"}
_ERROR = obj(["error"], {"error": obj(["code", "message"], {
    "code": STR, "message": STR, "field": {"type": "string", "description": "the bad field"},
    "outcome": _OUTCOME})})
_OPENAI_ERROR = obj(["error"], {"error": obj(["message", "type", "code", "param"], {
    "message": STR, "type": STR, "code": nullable(STR), "param": nullable(STR),
    "outcome": _OUTCOME})})
_CHAT = obj(["id", "object", "created", "model", "choices", "usage"], {
    "id": STR, "object": {"const": "chat.completion"}, "created": INT, "model": STR,
    "choices": {"type": "array", "items": obj(["index", "message", "finish_reason"], {
        "index": INT, "finish_reason": STR,
        "message": obj(["role", "content"], {
            "role": {"const": "assistant"}, "content": STR,
            "reasoning_content": nullable(STR), "refusal": nullable(STR)})})},
    "usage": _USAGE})
_MODELS = obj(["object", "data"], {"object": {"const": "list"}, "data": {
    "type": "array", "items": obj(["id", "object", "created", "owned_by"], {
        "id": STR, "object": {"const": "model"}, "created": INT, "owned_by": STR})}})
_HEALTH = obj(["status", "checks", "auth"], {
    "status": {"enum": ["ok", "degraded", "unavailable"],
               "description": "degraded: Redis memory is high or full (see redis_memory)"},
    "checks": {"type": "object", "additionalProperties": STR},
    "redis_memory": obj(["state"], {
        "state": {"enum": ["ok", "high", "full", "unknown"],
                  "description": "high: at 90% of maxmemory or more; full: over it, writes "
                                 "are refused (submits get 503 queue_full)"},
        "used_bytes": INT, "maxmemory_bytes": nullable(INT),
        "used_percent": nullable({"type": "number"}), "error": STR}),
    "auth": {"type": "string", "description": "'api-keys', or a warning that the edge is open"},
    "failing": {"type": "array", "items": STR}})
_ASYNC = obj(["status", "coordinators", "processors", "queue", "open_batch", "batches",
              "settings", "stats", "timestamp"], {
    "status": STR,
    "scope": {"enum": ["all", "tenant"],
              "description": "an admin key sees every tenant's figures; a tenant's key its own "
                             "tenant's, and null for the deployment's (free capacity, batches)"},
    "coordinators": obj(["alive", "count"], {"alive": BOOL, "count": INT}),
    "processors": obj(["alive", "count", "free_capacity", "tasks_in_flight"], {
        "alive": BOOL, "count": INT, "free_capacity": nullable(INT), "tasks_in_flight": INT}),
    "queue": obj(["depth"], {"depth": INT}),
    "open_batch": obj(["size", "flush_at"], {"size": INT, "flush_at": TIME_OR_NULL}),
    "batches": obj(["waiting", "in_flight", "tasks_waiting"], {
        "waiting": nullable(INT), "in_flight": nullable(INT), "tasks_waiting": INT}),
    "settings": {"type": "object"},
    "stats": {"type": "object", "additionalProperties": INT},
    "tenants": {"type": "object", "description": "tasks queued and running per tenant",
                "additionalProperties": obj(["queued", "running"],
                                            {"queued": INT, "running": INT})},
    "timestamp": TIME})
_AI = obj(["base_url", "model", "mock", "api_key_configured", "streaming", "last_error"], {
    "base_url": STR, "model": STR,
    "mock": {**nullable(BOOL), "description": "whether the providers say they are Sluice's "
             "mock (true: every one; false: any one is not); null while one cannot be reached"},
    "api_key_configured": {"type": "boolean", "description": "the key itself is never shown"},
    "streaming": nullable(BOOL), "streaming_checked_at": TIME_OR_NULL,
    "last_success_at": TIME_OR_NULL, "last_error": nullable(STR),
    "last_error_at": TIME_OR_NULL, "timeout_s": {"type": "number"},
    "providers": {"type": "array", "description": "the governor's state per provider "
                  "(base URL, key fingerprint, model)", "items": obj(
        ["id", "window", "limit", "in_flight", "paused_until", "rate_limited_last_minute"], {
            "id": STR, "base_url": STR, "model": STR, "key": STR,
            "window": nullable({"type": "number"}), "limit": INT, "in_flight": nullable(INT),
            "paused_until": TIME_OR_NULL, "rate_limited_last_minute": nullable(INT),
            "learned": {"type": "object", "description": "what x-ratelimit-* headers said"}})}})
_DEAD = obj(["data"], {"data": {"type": "array", "items": obj(
    ["id", "model", "attempts", "error", "created_at", "failed_at"], {
        "id": STR, "model": nullable(STR), "attempts": INT,
        "error": {"description": "the last error, as in the task"},
        "created_at": TIME_OR_NULL, "failed_at": TIME_OR_NULL})}})


# --- operations -----------------------------------------------------------------------------
def _id_param() -> Schema:
    return {"name": "id", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": TASK_ID}}


def _idempotency_param() -> Schema:
    return {"name": "Idempotency-Key", "in": "header", "required": False,
            "description": "the same key with the same body answers the same task; with "
                           "another body, 409",
            "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN,
                       "maxLength": 255}}


def _task_links() -> dict[str, Schema]:
    by_id = {"id": "$response.body#/id"}
    return {name: {"operationId": op, "parameters": by_id} for name, op in (
        ("GetTask", "getTask"), ("CancelTask", "cancelTask"),
        ("TaskEvents", "taskEvents"), ("RetryTask", "retryTask"))}


def _paths(s: EdgeSettings, requests: dict[str, Schema]) -> dict[str, Any]:
    rate = {name: {"description": text, "schema": STR} for name, text in (
        ("x-ratelimit-limit-requests", "tasks this key may submit per minute "
                                       "(TENANT_RATE_PER_MINUTE; absent when unlimited)"),
        ("x-ratelimit-remaining-requests", "submissions left in this minute"),
        ("x-ratelimit-reset-requests", "when the minute resets, as 1.5s or 20ms"))}
    location = {"Location": {"description": "the task's URL", "schema": STR}, **rate}
    accepted = obj(["id", "status", "created_at"], {
        "id": {"type": "string", "pattern": TASK_ID},
        "status": {"enum": list(tasks.STATUSES)}, "created_at": TIME_OR_NULL})
    size = f"at most {s.max_body_bytes} bytes (larger: 413)"
    body = {"required": True, "description": size,
            "content": {"application/json": {"schema": ref("TaskRequest")}}}
    chat_body = {"required": True, "description": size,
                 "content": {"application/json": {"schema": ref("ChatCompletionRequest")}}}
    task_header = {"X-Sluice-Task-Id": {"description": "the task behind this completion",
                                        "schema": STR}, **rate}
    priority_header = {"name": PRIORITY_HEADER, "in": "header", "required": False,
                       "description": "the task's priority when the body has none (lower "
                                      "runs sooner)",
                       "schema": {"type": "string", "pattern": PRIORITY_HEADER_PATTERN}}
    submit_errors = (400, 401, 408, 409, 413, 415, 422, 429, 503)
    # schemathesis reads a text/event-stream answer as events {id, event, data}, one by one
    task_events = {"text/event-stream": {"schema": obj(["data"], {
        "id": STR, "event": {"enum": ["status", "reasoning", "content", "refusal", "choice",
                                      "reset", "done", "error", "cancelled"]},
        "data": {"type": "string", "description": "JSON: {delta}, {status}, or the task"}})}}
    chunks = {"text/event-stream": {"schema": obj(["data"], {"data": {
        "type": "string", "description": "a chat.completion.chunk as JSON, an error object "
                                         "as JSON, or [DONE]"}})}}
    event_id = {"type": "string", "pattern": EVENT_ID}
    return {
        "/api/tasks": {"post": {
            "operationId": "createTask", "summary": "Submit a task",
            "parameters": [_idempotency_param()], "requestBody": body,
            "responses": {"202": {**json_ok("stored and queued (or the task an "
                                            "Idempotency-Key already named)", accepted,
                                            location), "links": _task_links()},
                          **errors(*submit_errors)}}},
        "/api/tasks/{id}": {
            "get": {"operationId": "getTask", "summary": "A task: status, result, error",
                    "parameters": [_id_param()],
                    "responses": {"200": json_ok("the task", ref("Task")),
                                  **errors(401, 404, 503)}},
            "delete": {"operationId": "cancelTask", "summary": "Cancel a task",
                       "parameters": [_id_param()],
                       "responses": {
                           "200": json_ok("cancelled at once (it was not running yet)",
                                          ref("TaskState")),
                           "202": json_ok("running: its processor was told to stop",
                                          ref("TaskState")),
                           **errors(401, 404, 409, 503)}}},
        "/api/tasks/{id}/events": {"get": {
            "operationId": "taskEvents",
            "summary": "The task's status changes and deltas, live (Server-Sent Events)",
            "description": "Events: status, reasoning, content, refusal, reset, then exactly "
                           "one of done, error, cancelled. Each event's id resumes the "
                           "stream through Last-Event-ID.",
            "parameters": [
                _id_param(),
                {"name": "Last-Event-ID", "in": "header", "required": False,
                 "schema": event_id},
                {"name": "last_event_id", "in": "query", "required": False,
                 "schema": event_id}],
            "responses": {"200": {"description": "the event stream", "content": task_events},
                          "204": {"description": "the task is over and the client has its "
                                                 "last event"},
                          **errors(401, 404, 422, 503)}}},
        "/api/tasks/{id}/retry": {"post": {
            "operationId": "retryTask", "summary": "Queue a failed task again",
            "parameters": [_id_param()],
            "responses": {"202": json_ok("queued again", ref("TaskState"), location),
                          **errors(401, 404, 409, 503)}}},
        "/api/dead-letters": {"get": {
            "operationId": "listDeadLetters", "summary": "This tenant's failed tasks",
            "parameters": [{"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500,
                                       "default": 50}}],
            "responses": {"200": json_ok("newest first", ref("DeadLetters")),
                          **errors(401, 422, 503)}}},
        "/api/health": {"get": {
            "operationId": "health", "summary": "Health of the edge and its dependencies",
            "security": [],
            "responses": {"200": json_ok("all dependencies answer (status ok or degraded)",
                                         ref("Health")),
                          "503": json_ok("a dependency is down: `failing` names it",
                                         ref("Health"))}}},
        "/api/async-status": {"get": {
            "operationId": "asyncStatus", "summary": "Queue, batch and replica figures",
            "description": "A tenant's key sees its own tenant's figures; an admin key "
                           "(EDGE_ADMIN_KEYS) every tenant's.",
            "responses": {"200": json_ok("live figures", ref("AsyncStatus")),
                          **errors(401, 503)}}},
        "/api/ai-status": {"get": {
            "operationId": "aiStatus", "summary": "The model provider as processors see it",
            "description": "A tenant's key sees its own last error and no call counts; an "
                           "admin key (EDGE_ADMIN_KEYS) all of them.",
            "responses": {"200": json_ok("provider URL, model, streaming, last error",
                                         ref("AiStatus")),
                          **errors(401, 503)}}},
        "/api/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "security": [],
            "responses": {"200": json_ok("OpenAPI 3.1", {"type": "object"})}}},
        "/v1/chat/completions": {"post": {
            "operationId": "chatCompletions",
            "summary": "OpenAI-compatible chat completion, run as a task",
            "parameters": [_idempotency_param(), priority_header], "requestBody": chat_body,
            "responses": {
                "200": {"description": "chat.completion, or chunks when stream is true",
                        "headers": task_header,
                        "content": {"application/json": {"schema": ref("ChatCompletion")},
                                    **chunks}},
                **errors(*submit_errors, 502, openai=True),
                "404": _error("model_not_found: the model is not one of AI_MODELS", True)}}},
        "/v1/models": {"get": {
            "operationId": "listModels",
            "summary": "The models a request may name (AI_MODELS), the default first",
            "responses": {"200": json_ok("OpenAI's model list", ref("ModelList")),
                          **errors(401, openai=True)}}},
        **openapi_responses.paths(s, requests["ChatCompletionRequest"]["properties"],
                                  [_idempotency_param(), priority_header]),
        **(openapi_batches.paths(s) | webhooks_openapi.paths() if s.batch_api_on else {}),
    }


def document(settings: EdgeSettings) -> dict[str, Any]:
    requests = protocol.components(settings)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Sluice edge", "version": "1",
                 "description": "Takes slow LLM calls off the request path: submit, get an id "
                                "at once, read the answer live or when it is done."},
        "paths": _paths(settings, requests),
        "components": {"schemas": {
            **requests, "Task": _TASK,
            "TaskResult": _RESULT, "TaskState": obj(["id", "status"], {
                "id": STR, "status": {"enum": [*tasks.STATUSES, "cancelling"]}}),
            "Error": _ERROR, "OpenAIError": _OPENAI_ERROR, "ChatCompletion": _CHAT,
            "ModelList": _MODELS, "Health": _HEALTH, "AsyncStatus": _ASYNC, "AiStatus": _AI,
            "DeadLetters": _DEAD, **openapi_batches.SCHEMAS, **openapi_responses.SCHEMAS}},
    }
    if not settings.open_access:
        doc["components"]["securitySchemes"] = {
            "apiKey": {"type": "http", "scheme": "bearer",
                       "description": "a key from EDGE_API_KEYS; it names your tenant"}}
        doc["security"] = [{"apiKey": []}]
    else:
        for path in doc["paths"].values():
            for op in path.values():
                op.get("responses", {}).pop("401", None)
    return doc


async def serve(request: web.Request) -> web.Response:
    """``GET /api/openapi.json``: public, like /api/health, so tools can discover the API."""
    return json_response(document(request.app[SETTINGS]))

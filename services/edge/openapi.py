"""The OpenAPI 3.1 document of the edge, served at ``/api/openapi.json``.

Built from the settings, so the limits it states (body size, message count, text length,
``max_tokens``) are the ones this edge enforces, and security appears only when keys are
configured. The tests keep it true: every route of the app must be documented here and every
operation here must exist (tests/integration/test_openapi_doc.py), and schemathesis checks
every answer against it (tests/e2e/test_schemathesis.py).

The schemas say exactly what the validators accept, because schemathesis sends data both just
inside and just outside them. Two limits cannot be said in JSON Schema and are only described:
the total text of all messages, and the size of ``metadata`` as JSON.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.edge.context import SETTINGS
from services.edge.openai.batch import openapi as openapi_batches
from services.edge.openai.responses import openapi as openapi_responses
from services.edge.plumbing.bodies import INT_MAX, INT_MIN
from services.edge.settings import EdgeSettings
from services.edge.tasks.validation import (
    CHAT_FIELDS,
    FLEX_PRIORITY,
    MAX_ID_CHARS,
    MAX_METADATA_DEPTH,
    MAX_N,
    MAX_TOOL_CALLS,
    PRIORITY_HEADER,
    PRIORITY_HEADER_PATTERN,
    PRIORITY_MAX,
    PRIORITY_MIN,
    PROVIDER_OPTIONS_RESERVED,
    ROLES,
)
from services.edge.tasks.views import IDEMPOTENCY_KEY_PATTERN, json_response
from services.edge.webhooks import openapi as webhooks_openapi
from shared import deadlines, tasks

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
def _message(s: EdgeSettings) -> Schema:
    text = {"type": "string", "maxLength": s.max_text_chars}
    # Parts of any type (text, image_url, input_audio, file, ...), forwarded as given.
    part = {"anyOf": [obj(["type", "text"], {"type": {"const": "text"}, "text": STR}),
                      obj(["type"], {"type": {"type": "string", "not": {"const": "text"}}})]}
    content = {"anyOf": [text, {"type": "array", "minItems": 1, "items": part}]}
    name64 = {"type": "string", "minLength": 1, "maxLength": 64}
    call_id = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}
    calls = {"type": "array", "minItems": 1, "maxItems": MAX_TOOL_CALLS,
             "items": {"anyOf": [obj(["id", "type", "function"], {
                 "id": call_id, "type": {"const": "function"},
                 "function": obj(["name", "arguments"], {
                     "name": name64,
                     "arguments": {"type": "string", "description": "JSON text"}})}),
                 obj(["id", "type"], {"id": call_id, "type": {"const": "custom"}})]}}
    null = {"type": "null"}
    others = sorted(ROLES - {"tool", "assistant"})
    # One branch per kind of message: a tool's answer names its call; an assistant's message
    # may carry tool calls (then its content may be null); any other has content.
    return {**obj(["role"], {
        "role": {"enum": sorted(ROLES)},
        "content": {"anyOf": [*content["anyOf"], null]},
        "name": nullable(name64),
        "tool_calls": nullable(calls),
        "tool_call_id": nullable(call_id),
    }, description="OpenAI's message. Every member is forwarded as given (reasoning_content, "
                   "refusal, DeepSeek's prefix...); these are the ones Sluice checks."),
        "anyOf": [
            obj(["role", "content", "tool_call_id"], {
                "role": {"const": "tool"}, "content": content, "tool_call_id": call_id,
                "tool_calls": null}),
            obj(["role", "tool_calls"], {
                "role": {"const": "assistant"}, "tool_calls": calls, "tool_call_id": null}),
            obj(["role", "content"], {
                "role": {"const": "assistant"}, "content": content, "tool_call_id": null}),
            obj(["role", "content"], {
                "role": {"enum": others}, "content": content, "tool_calls": null,
                "tool_call_id": null})]}


def _sampling(s: EdgeSettings) -> dict[str, Schema]:
    stop_text = {"type": "string", "minLength": 1, "maxLength": 256}
    return {
        "model": nullable({"enum": list(s.models),
                           "description": f"one of AI_MODELS; default: {s.provider.ai_model}. "
                                          "Another: model_not_found (404 on /v1, else 422)"}),
        "messages": {"type": "array", "minItems": 1, "maxItems": s.max_messages,
                     "items": ref("Message"),
                     "description": f"at most {s.max_text_chars} characters of text in all"},
        "max_tokens": nullable({"type": "integer", "minimum": 1,
                                "maximum": s.max_tokens_limit}),
        "temperature": nullable({"type": "number", "minimum": 0, "maximum": 2}),
        "top_p": nullable({"type": "number", "minimum": 0, "maximum": 1}),
        "stop": nullable({"anyOf": [stop_text, {"type": "array", "minItems": 1, "maxItems": 4,
                                                "items": stop_text}]}),
        "metadata": nullable({"type": "object", "additionalProperties": ref("MetadataValue"),
                              "description":
                              f"yours, returned with the task; at most "
                              f"{s.max_metadata_bytes} bytes as JSON, nested at most "
                              f"{MAX_METADATA_DEPTH} levels, integers within 64 bits"}),
        "deadline": nullable({"anyOf": [
            {"type": "number", "exclusiveMinimum": 0, "maximum": deadlines.MAX_DEADLINE_S},
            {"type": "string", "format": "date-time"}],
            "description": "seconds from submit, or an RFC 3339 time: a task still waiting "
                           "then ends failed, deadline_exceeded, never sent to the provider "
                           "(default: the processors' TASK_DEADLINE_S, 24 h)"}),
        "priority": nullable({
            "type": "integer", "minimum": PRIORITY_MIN, "maximum": PRIORITY_MAX,
            "description": "lower runs sooner within your own tasks (default 0); each step is "
                           "worth the coordinators' PRIORITY_AGING_S of waiting, so a high "
                           "number delays a task but never starves it. Not sent to the "
                           "provider"}),
        "max_completion_tokens": nullable({"type": "integer", "minimum": 1,
                                           "maximum": s.max_tokens_limit}),
        "n": nullable({"type": "integer", "minimum": 1, "maximum": MAX_N,
                       "description": "every choice is relayed and stored"}),
        "stream": nullable(BOOL),
        "stream_options": nullable({"type": "object",
                                    "properties": {"include_usage": nullable(BOOL)}}),
        "service_tier": nullable({"type": "string", "description": f'"flex": priority '
                                  f"{FLEX_PRIORITY} unless a priority is given (/v1). "
                                  "Forwarded"}),
        "provider_options": nullable({
            "type": "object", "description": "merged into the provider's request: a "
            "provider's own parameters (top_k, enable_thinking, ...); may not set "
            + ", ".join(sorted(PROVIDER_OPTIONS_RESERVED)) + ". Not sent as itself",
            "propertyNames": {"not": {"enum": sorted(PROVIDER_OPTIONS_RESERVED)}}}),
        # Every other documented Chat Completions field: forwarded as given, checked by the
        # provider (a refusal comes back as the provider's own 400).
        **{name: {"description": "forwarded to the provider as given"}
           for name in sorted(CHAT_FIELDS - _CHECKED)},
    }


# The fields whose schema Sluice states above (the rest of CHAT_FIELDS pass through).
_CHECKED = frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "temperature",
                      "top_p", "stop", "metadata", "n", "stream", "stream_options",
                      "service_tier"})


def _task_request(s: EdgeSettings) -> Schema:
    props = _sampling(s)
    props["prompt"] = {"type": "string", "minLength": 1, "maxLength": s.max_text_chars,
                       "description": "shorthand for one user message"}
    return {"type": "object", "properties": props, "additionalProperties": False,
            "oneOf": [{"required": ["messages"]}, {"required": ["prompt"]}],
            "description": "Every documented Chat Completions field, forwarded to the provider "
                           "as given, and Sluice's own (prompt, deadline, priority, "
                           "provider_options). Other fields are refused (422), so a typo never "
                           "silently changes what is sent: a provider's own parameters go in "
                           "provider_options."}


def _chat_request(s: EdgeSettings) -> Schema:
    props = _sampling(s)
    return {"type": "object", "required": ["messages"], "properties": props,
            "description": "Forwarded to the provider as given, less deadline, priority and "
                           "provider_options (merged in); other members (a provider's own, "
                           "as the SDKs' extra_body sends them) are forwarded too."}


# Numbers within 64-bit integers' range: a wider integer would not be kept exactly.
_METADATA_VALUE = {"anyOf": [
    {"type": ["string", "boolean", "null"]},
    {"type": "number", "minimum": INT_MIN, "maximum": INT_MAX},
    {"type": "array", "items": ref("MetadataValue")},
    {"type": "object", "additionalProperties": ref("MetadataValue")}]}


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


def _paths(s: EdgeSettings) -> dict[str, Any]:
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
        "id": STR, "event": {"enum": ["status", "reasoning", "content", "refusal", "reset",
                                      "done", "error", "cancelled"]},
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
        **openapi_responses.paths(s, _sampling(s), [_idempotency_param(), priority_header]),
        **(openapi_batches.paths(s) | webhooks_openapi.paths() if s.batch_api_on else {}),
    }


def document(settings: EdgeSettings) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Sluice edge", "version": "1",
                 "description": "Takes slow LLM calls off the request path: submit, get an id "
                                "at once, read the answer live or when it is done."},
        "paths": _paths(settings),
        "components": {"schemas": {
            "TaskRequest": _task_request(settings), "Message": _message(settings),
            "MetadataValue": _METADATA_VALUE,
            "ChatCompletionRequest": _chat_request(settings), "Task": _TASK,
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

"""The Responses API's part of the OpenAPI document: /v1/responses."""

from __future__ import annotations

from typing import Any

from services.edge.openai.responses.api import CONTEXT, IGNORED_HEADER, OMITTED_HEADER
from services.edge.openai.responses.translate import EFFORTS, IGNORED, REFUSED, SERVICE_TIERS
from services.edge.settings import EdgeSettings
from services.edge.tasks.validation import PRIORITY_MAX, PRIORITY_MIN

Schema = dict[str, Any]
REF = "#/components/schemas/"
STR, INT, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
STR_OR_NULL, INT_OR_NULL = {"type": ["string", "null"]}, {"type": ["integer", "null"]}
RESPONSE_ID = "^resp_[0-9a-f]{32}$"
STATUSES = ["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
_WHY = {400: "a field is invalid or cannot be served: the message and `param` name it",
        401: "no valid API key (Authorization: Bearer <key>)",
        404: "no such response for this key (another tenant's, one made with store: false, a "
             "task that is not a response), or the model is not one of AI_MODELS",
        408: "the body did not arrive within EDGE_BODY_TIMEOUT_S, or the deadline passed",
        409: "the response has already finished, or an earlier use of the Idempotency-Key "
             "had another body",
        413: "the body is larger than MAX_BODY_BYTES",
        415: "the body is not application/json",
        429: "a limit of this key's tenant: submissions per minute or tasks active at once",
        503: "Redis or the store is unreachable, or the edge stopped following the response: "
             "retry, or retrieve it by id"}


def _errors(*statuses: int) -> dict[str, Schema]:
    return {str(s): {"description": _WHY[s], "content": {"application/json": {
        "schema": {"$ref": REF + "OpenAIError"}}}} for s in statuses}


def _obj(required: list[str], props: dict[str, Schema]) -> Schema:
    return {"type": "object", "required": required, "properties": props}


def _id() -> Schema:
    return {"name": "id", "in": "path", "required": True, "description": "the response's id",
            "schema": {"type": "string", "pattern": RESPONSE_ID}}


_HEADERS = {"X-Sluice-Task-Id": {"description": "the task this response is", "schema": STR},
            OMITTED_HEADER: {"description": "tools left out of the provider's call (a Chat "
                                            "Completions provider cannot run them)",
                             "schema": STR},
            IGNORED_HEADER: {"description": "fields and include values Sluice does not serve",
                             "schema": STR}}
_EVENTS = {"text/event-stream": {"schema": _obj(["data"], {
    "event": STR, "data": {"type": "string", "description": "the event as JSON, with its "
                                                            "type and sequence_number"}})}}


def _request(s: EdgeSettings) -> Schema:
    number = {"type": ["number", "null"]}
    return {"type": "object", "properties": {
        "model": STR_OR_NULL,
        "input": {"description": "a string, or items: message (input_text, input_image, "
                                 "input_file parts), function_call, function_call_output, "
                                 "reasoning",
                  "anyOf": [STR, {"type": "array", "items": {"type": "object"}}]},
        "instructions": STR_OR_NULL,
        "tools": {"type": ["array", "null"], "items": {"type": "object"},
                  "description": "function and namespace tools reach the provider (a "
                                 "namespace's functions as <namespace>__<name>); other types "
                                 "are left out (RESPONSES_HOSTED_TOOLS=refuse: a 400)"},
        "tool_choice": {}, "parallel_tool_calls": {"type": ["boolean", "null"]},
        "text": {"type": ["object", "null"], "description": "format: text, json_object or "
                                                           "json_schema (as response_format)"},
        "reasoning": {"type": ["object", "null"], "properties": {
            "effort": {"enum": [*sorted(EFFORTS), None]}}},
        "max_output_tokens": {"type": ["integer", "null"], "minimum": 1,
                              "maximum": s.max_tokens_limit},
        "temperature": number, "top_p": number,
        "metadata": {"type": ["object", "null"]},
        "store": {"type": ["boolean", "null"], "description": "false: the response cannot be "
                                                              "retrieved or continued"},
        "background": {"type": ["boolean", "null"], "description": "answer at once (queued); "
                                                                   "needs store"},
        "stream": {"type": ["boolean", "null"]},
        "previous_response_id": STR_OR_NULL,
        "service_tier": {"enum": [*sorted(SERVICE_TIERS), None]},
        "user": STR_OR_NULL, "safety_identifier": STR_OR_NULL, "prompt_cache_key": STR_OR_NULL,
        "deadline": {"description": "Sluice's: when to give up (seconds from now, or a time)"},
        "priority": {"type": ["integer", "null"], "minimum": PRIORITY_MIN,
                     "maximum": PRIORITY_MAX, "description": "Sluice's: lower runs sooner"},
        "include": {"type": ["array", "null"], "items": STR,
                    "description": "accepted; no value is served"}},
        "description": f"Ignored: {', '.join(sorted(IGNORED))}. Refused: "
                       f"{', '.join(sorted(REFUSED))}. A field the Responses API does not "
                       "define goes to the provider as given. Stored with the task under "
                       f"`{CONTEXT}`, never sent on."}


_ITEM = {"type": "object", "required": ["type"], "properties": {"type": STR, "id": STR}}
_RESPONSE = _obj(["id", "object", "created_at", "status", "model", "output", "error",
                  "incomplete_details", "tools", "tool_choice", "parallel_tool_calls"], {
    "id": {"type": "string", "pattern": RESPONSE_ID}, "object": {"const": "response"},
    "created_at": INT, "completed_at": INT_OR_NULL, "status": {"enum": STATUSES},
    "model": STR, "output": {"type": "array", "items": _ITEM},
    "error": {"type": ["object", "null"]}, "incomplete_details": {"type": ["object", "null"]},
    "usage": {"type": ["object", "null"]}, "tools": {"type": "array"}, "tool_choice": {},
    "parallel_tool_calls": BOOL, "background": BOOL, "store": BOOL,
    "previous_response_id": STR_OR_NULL, "metadata": {"type": ["object", "null"]}})
_ITEMS = _obj(["object", "data", "first_id", "last_id", "has_more"], {
    "object": {"const": "list"}, "data": {"type": "array", "items": _ITEM},
    "first_id": STR_OR_NULL, "last_id": STR_OR_NULL, "has_more": BOOL})
SCHEMAS = {"Response": _RESPONSE, "ResponseItemList": _ITEMS}


def paths(s: EdgeSettings) -> dict[str, Any]:
    body = {"required": True, "content": {"application/json": {"schema": _request(s)}}}
    ok = {"description": "the response object (background: queued at once; else once it "
                         "ended), or its events when stream is true",
          "headers": _HEADERS,
          "content": {"application/json": {"schema": {"$ref": REF + "Response"}}, **_EVENTS}}
    as_json = {"application/json": {"schema": {"$ref": REF + "Response"}}}
    response = {"description": "the response object", "content": as_json}
    return {
        "/v1/responses": {"post": {
            "operationId": "createResponse",
            "summary": "OpenAI's Responses API, run as a task",
            "requestBody": body,
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "schema": STR}],
            "responses": {"200": ok, **_errors(400, 401, 404, 408, 409, 413, 415, 429, 503)}}},
        "/v1/responses/{id}": {"get": {
            "operationId": "getResponse", "summary": "A response, or its events",
            "parameters": [_id(),
                           {"name": "stream", "in": "query", "required": False,
                            "schema": {"enum": ["true", "false"]}},
                           {"name": "starting_after", "in": "query", "required": False,
                            "description": "with stream: the events after this "
                                           "sequence_number",
                            "schema": {"type": "integer", "minimum": -1}}],
            "responses": {"200": {**response, "content": {**as_json, **_EVENTS}},
                          **_errors(400, 401, 404, 503)}}},
        "/v1/responses/{id}/cancel": {"post": {
            "operationId": "cancelResponse", "summary": "Cancel a queued or running response",
            "parameters": [_id()],
            "responses": {"200": response, **_errors(401, 404, 409, 503)}}},
        "/v1/responses/{id}/input_items": {"get": {
            "operationId": "listResponseInputItems", "summary": "A response's input items",
            "parameters": [_id(),
                           {"name": "after", "in": "query", "required": False, "schema": STR},
                           {"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                           {"name": "order", "in": "query", "required": False,
                            "schema": {"enum": ["asc", "desc"]}}],
            "responses": {"200": {"description": "a page of items, as OpenAI pages lists",
                                  "content": {"application/json": {
                                      "schema": {"$ref": REF + "ResponseItemList"}}}},
                          **_errors(400, 401, 404, 503)}}},
    }

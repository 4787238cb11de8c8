"""The Responses API's part of the OpenAPI document: /v1/responses."""

from __future__ import annotations

from typing import Any

from services.edge.openai.responses.api import (
    CONTEXT,
    IGNORED_HEADER,
    OMITTED_HEADER,
    STARTING_AFTER_MAX,
)
from services.edge.openai.responses.translate import (
    CHAT_ONLY,
    EFFORTS,
    IGNORED,
    REFUSED,
    SERVICE_TIERS,
)
from services.edge.settings import EdgeSettings

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
        409: "the response has already finished (cancel), is still running after its "
             "cancellation (delete), or an earlier use of the Idempotency-Key "
             "had another body",
        413: "the body is larger than MAX_BODY_BYTES",
        415: "the body is not application/json",
        422: "the Idempotency-Key or X-Sluice-Priority header is malformed",
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


HOSTED = ["web_search", "web_search_preview", "file_search", "code_interpreter",
          "image_generation", "computer_use_preview", "mcp", "local_shell", "custom"]
_NAME = {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"}


def _request(s: EdgeSettings, sampling: dict[str, Schema]) -> Schema:
    text = {"type": "string", "maxLength": s.max_text_chars}
    message = {"type": "object", "required": ["role", "content"], "properties": {
        "type": {"const": "message"},
        "role": {"enum": ["user", "system", "developer", "assistant"]}, "content": text}}
    function = {"type": "object", "required": ["type", "name"], "properties": {
        "type": {"const": "function"}, "name": _NAME, "description": {"type": "string"},
        "parameters": {"type": "object"}, "strict": {"type": ["boolean", "null"]}}}
    other = {"type": "string", "minLength": 1, "not": {"enum": ["function", "namespace"]},
             "description": f"left out of the provider's call: {', '.join(HOSTED)}, ..."}
    hosted = {"type": "object", "required": ["type"], "properties": {"type": other}}
    named = {"type": "object", "required": ["type", "name"], "properties": {
        "type": {"const": "function"}, "name": _NAME}}
    fmt = {"anyOf": [
        {"type": "object", "required": ["type"],
         "properties": {"type": {"enum": ["text", "json_object"]}}},
        {"type": "object", "required": ["type", "name", "schema"], "properties": {
            "type": {"const": "json_schema"},
            "name": {"type": "string", "minLength": 1, "maxLength": 64},
            "schema": {"type": "object"}, "description": {"type": "string"},
            "strict": {"type": ["boolean", "null"]}}}]}
    string_or_null = {"type": ["string", "null"]}
    refused: Schema = {"not": {}}
    props: dict[str, Schema] = {
        name: sampling[name] for name in ("model", "temperature", "top_p", "metadata",
                                          "deadline", "priority")}
    props.update({
        "input": {"description": "a string, or items: message (its content also as "
                                 "input_text, input_image, input_file parts), function_call, "
                                 "function_call_output, reasoning",
                  "anyOf": [{**text, "minLength": 1},
                            {"type": "array", "minItems": 1, "maxItems": s.max_messages,
                             "items": message}]},
        "instructions": {**text, "type": ["string", "null"]},
        "tools": {"type": ["array", "null"], "items": {"anyOf": [function, hosted]},
                  "description": "function and namespace tools reach the provider (a "
                                 "namespace's functions as <namespace>__<name>); other types "
                                 "are left out (RESPONSES_HOSTED_TOOLS=refuse: a 400)"},
        "tool_choice": {"anyOf": [
            {"enum": ["auto", "none", "required", None]}, named,
            {"type": "object", "required": ["type"], "properties": {"type": {
                "type": "string", "not": {"enum": ["function", "allowed_tools"]}}}},
            {"type": "object", "required": ["type", "mode", "tools"], "properties": {
                "type": {"const": "allowed_tools"}, "mode": {"enum": ["auto", "required"]},
                "tools": {"type": "array", "items": named}}}]},
        "parallel_tool_calls": {"type": ["boolean", "null"]},
        "text": {"type": ["object", "null"], "properties": {"format": fmt}},
        "reasoning": {"type": ["object", "null"], "properties": {
            "effort": {"enum": [*sorted(EFFORTS), None]}}},
        "max_output_tokens": {"type": ["integer", "null"], "minimum": 1,
                              "maximum": s.max_tokens_limit},
        "store": {"type": ["boolean", "null"], "description": "false: the response cannot be "
                                                              "retrieved or continued"},
        "background": {"type": ["boolean", "null"], "description": "answer at once (queued); "
                                                                   "needs store"},
        "stream": {"type": ["boolean", "null"]},
        "previous_response_id": string_or_null,
        "service_tier": {"enum": [*sorted(SERVICE_TIERS), None]},
        "user": string_or_null, "safety_identifier": string_or_null,
        "prompt_cache_key": string_or_null,
        "truncation": {"enum": ["auto", "disabled", None]},
        "include": {"type": ["array", "null"], "items": STR,
                    "description": "accepted; no value is served"},
        **{name: {"type": "null"} for name in REFUSED},
        **{name: refused for name in CHAT_ONLY}})
    return {"type": "object", "properties": props,
            "anyOf": [{"required": ["input"]},
                      {"required": ["previous_response_id"],
                       "properties": {"previous_response_id": {"type": "string"}}}],
            # instructions take a message of their own
            "if": {"required": ["instructions"],
                   "properties": {"instructions": {"type": "string"}}},
            "then": {"properties": {"input": {"maxItems": s.max_messages - 1}}},
            "not": {"required": ["background", "store"], "properties": {
                "background": {"const": True}, "store": {"const": False}}},
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


def paths(s: EdgeSettings, sampling: dict[str, Schema],
          headers: list[Schema]) -> dict[str, Any]:
    """``sampling``: the shared field schemas (model, temperature, ...); ``headers``: the
    Idempotency-Key and priority header parameters, as /v1/chat/completions has them."""
    body = {"required": True, "content": {"application/json": {"schema": _request(s, sampling)}}}
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
            "parameters": headers,
            "responses": {"200": ok,
                          **_errors(400, 401, 404, 408, 409, 413, 415, 422, 429, 503)}}},
        "/v1/responses/{id}": {"get": {
            "operationId": "getResponse", "summary": "A response, or its events",
            "parameters": [_id(),
                           {"name": "stream", "in": "query", "required": False,
                            "schema": {"enum": ["true", "false"]}},
                           {"name": "starting_after", "in": "query", "required": False,
                            "description": "with stream: the events after this "
                                           "sequence_number",
                            "schema": {"type": "integer", "minimum": -1,
                                       "maximum": STARTING_AFTER_MAX}}],
            "responses": {"200": {**response, "content": {**as_json, **_EVENTS}},
                          **_errors(400, 401, 404, 503)}},
            "delete": {
                "operationId": "deleteResponse",
                "summary": "Delete a response (a queued or running one is cancelled first)",
                "parameters": [_id()],
                "responses": {"200": {"description": "the response is deleted",
                                      "content": {"application/json": {"schema": _obj(
                                          ["id", "object", "deleted"],
                                          {"id": STR, "object": {"const": "response.deleted"},
                                           "deleted": {"const": True}})}}},
                              **_errors(401, 404, 409, 503)}}},
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

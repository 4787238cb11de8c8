"""The Batch API's part of the OpenAPI document: /v1/files and /v1/batches."""

from __future__ import annotations

from typing import Any

from services.edge.openai.batch.batches import (
    ACTIVE,
    CANCELLED,
    COMPLETED,
    ENDPOINTS,
    EXPIRED,
    FAILED,
)
from services.edge.settings import EdgeSettings

Schema = dict[str, Any]
REF = "#/components/schemas/"
STR, INT = {"type": "string"}, {"type": "integer"}
STR_OR_NULL, INT_OR_NULL = {"type": ["string", "null"]}, {"type": ["integer", "null"]}
_WHY = {400: "a parameter or the body is invalid: the message and `param` name it",
        401: "no valid API key (Authorization: Bearer <key>)",
        404: "no such file or batch for this key",
        408: "the file did not arrive within BATCH_UPLOAD_TIMEOUT_S",
        409: "the batch has already ended or is ending",
        413: "the file or body is larger than the limit",
        415: "the body is not of the expected type",
        422: "the JSON body holds what would not be kept as sent (an integer beyond 64 bits, "
             "nesting too deep)",
        429: "`too_many_uploads`: this key (BATCH_UPLOADS_PER_TENANT) or this server "
             "(BATCH_UPLOADS_PER_EDGE) has as many uploads in progress as it takes; "
             "retry after Retry-After",
        503: "Redis is unreachable: retry shortly"}


def _errors(*statuses: int) -> dict[str, Schema]:
    return {str(s): {"description": _WHY[s], "content": {"application/json": {
        "schema": {"$ref": REF + "OpenAIError"}}}} for s in statuses}


def _ok(description: str, name: str) -> Schema:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": REF + name}}}}


def _id(what: str) -> Schema:
    return {"name": "id", "in": "path", "required": True, "description": f"the {what}'s id",
            "schema": STR}


def _paging(most: int) -> list[Schema]:
    return [{"name": "after", "in": "query", "required": False, "schema": STR},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": most}}]


def paths(s: EdgeSettings) -> dict[str, Any]:
    upload = {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["purpose", "file"], "additionalProperties": False,
        "properties": {"purpose": {"const": "batch"},
                       "file": {"type": "string", "format": "binary",
                                "description": f"JSONL, at most {s.batch_api.max_file_bytes} "
                                               f"bytes and {s.batch_api.max_file_lines} lines"}}}}}}
    create = {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["input_file_id", "endpoint", "completion_window"],
        "properties": {"input_file_id": STR, "endpoint": {"enum": list(ENDPOINTS)},
                       "completion_window": {"const": "24h"},
                       "metadata": {"type": ["object", "null"], "maxProperties": 16,
                                    "additionalProperties": {"type": "string",
                                                             "maxLength": 512}}}}}}}
    return {
        "/v1/files": {
            "post": {"operationId": "uploadFile", "summary": "Upload a batch input file",
                     "requestBody": upload,
                     "responses": {"200": _ok("OpenAI's file object", "File"),
                                   **_errors(400, 401, 408, 413, 415, 429, 503)}},
            "get": {"operationId": "listFiles", "summary": "This key's files, newest first",
                    "parameters": [*_paging(10_000), {"name": "purpose", "in": "query",
                                                      "required": False, "schema": STR}],
                    "responses": {"200": _ok("a list of file objects", "FileList"),
                                  **_errors(400, 401, 503)}}},
        "/v1/files/{id}": {
            "get": {"operationId": "getFile", "summary": "A file object",
                    "parameters": [_id("file")],
                    "responses": {"200": _ok("the file", "File"), **_errors(401, 404, 503)}},
            "delete": {"operationId": "deleteFile", "summary": "Delete a file",
                       "parameters": [_id("file")],
                       "responses": {"200": _ok("deleted", "FileDeleted"),
                                     **_errors(401, 404, 503)}}},
        "/v1/files/{id}/content": {"get": {
            "operationId": "fileContent", "summary": "A file's bytes (JSONL)",
            "parameters": [_id("file")],
            "responses": {"200": {"description": "the content",
                                  "content": {"application/jsonl": {"schema": STR}}},
                          **_errors(401, 404, 503)}}},
        "/v1/batches": {
            "post": {"operationId": "createBatch", "summary": "Run a file's requests as a batch",
                     "requestBody": create,
                     "responses": {"200": _ok("the batch, validating", "Batch"),
                                   **_errors(400, 401, 404, 413, 415, 422, 503)}},
            "get": {"operationId": "listBatches", "summary": "This key's batches, newest first",
                    "parameters": _paging(100),
                    "responses": {"200": _ok("a page of batches", "BatchList"),
                                  **_errors(400, 401, 503)}}},
        "/v1/batches/{id}": {"get": {
            "operationId": "getBatch", "summary": "A batch: status, counts, files",
            "parameters": [_id("batch")],
            "responses": {"200": _ok("the batch", "Batch"), **_errors(401, 404, 503)}}},
        "/v1/batches/{id}/cancel": {"post": {
            "operationId": "cancelBatch", "summary": "Cancel a batch (partial output is kept)",
            "parameters": [_id("batch")],
            "responses": {"200": _ok("cancelling or cancelled", "Batch"),
                          **_errors(401, 404, 409, 503)}}},
    }


_FILE = {"type": "object", "required": ["id", "object", "bytes", "created_at", "filename",
                                        "purpose"],
         "properties": {"id": STR, "object": {"const": "file"}, "bytes": INT,
                        "created_at": INT, "filename": STR,
                        "purpose": {"enum": ["batch", "batch_output"]},
                        "expires_at": INT_OR_NULL, "status": STR}}
_TIMES = ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at",
          "failed_at", "expired_at", "cancelling_at", "cancelled_at")
_BATCH = {"type": "object",
          "required": ["id", "object", "endpoint", "input_file_id", "completion_window",
                       "status", "created_at", "request_counts"],
          "properties": {
              "id": STR, "object": {"const": "batch"}, "endpoint": STR, "input_file_id": STR,
              "completion_window": STR,
              "status": {"enum": [*ACTIVE, FAILED, COMPLETED, EXPIRED, CANCELLED]},
              "output_file_id": STR_OR_NULL, "error_file_id": STR_OR_NULL,
              **{name: INT_OR_NULL for name in _TIMES},
              "request_counts": {"type": "object", "required": ["total", "completed", "failed"],
                                 "properties": {"total": INT, "completed": INT,
                                                "failed": INT}},
              "errors": {"type": ["object", "null"]}, "metadata": {"type": ["object", "null"]},
              "usage": {"type": ["object", "null"]}, "model": STR_OR_NULL}}


def _list(item: str) -> Schema:
    return {"type": "object", "required": ["object", "data", "has_more"],
            "properties": {"object": {"const": "list"},
                           "data": {"type": "array", "items": {"$ref": REF + item}},
                           "has_more": {"type": "boolean"}, "first_id": STR_OR_NULL,
                           "last_id": STR_OR_NULL}}


SCHEMAS: dict[str, Schema] = {
    "File": _FILE, "FileList": _list("File"), "Batch": _BATCH, "BatchList": _list("Batch"),
    "FileDeleted": {"type": "object", "required": ["id", "object", "deleted"],
                    "properties": {"id": STR, "object": {"const": "file"},
                                   "deleted": {"type": "boolean"}}}}

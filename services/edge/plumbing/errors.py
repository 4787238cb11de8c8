"""Every error leaves the edge as ``{"error": {"code", "message"}}`` with the right status:
never a 500 page or a traceback. OpenAI-compatible routes use OpenAI's shape instead."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from redis.exceptions import MaxConnectionsError, OutOfMemoryError

from shared import logs
from shared.redis_conn import UNAVAILABLE
from shared.store import StoreUnavailable

log = logs.get("sluice.edge")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                 403: "permission_error", 404: "not_found_error", 409: "conflict_error",
                 408: "invalid_request_error", 413: "invalid_request_error",
                 415: "invalid_request_error",
                 422: "invalid_request_error", 429: "rate_limit_error"}


class ApiError(Exception):
    def __init__(self, status: int, code: str | None, message: str, *,
                 headers: dict[str, str] | None = None, param: str | None = None,
                 openai_type: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.param = param
        self.openai_type = openai_type  # when OpenAI's differs from the status's usual one


def error_response(request: web.Request, err: ApiError) -> web.Response:
    if request.path.startswith("/v1/"):
        body = {"error": {"message": err.message, "code": err.code, "param": err.param,
                          "type": err.openai_type or _OPENAI_TYPES.get(err.status, "api_error")}}
    else:
        body = {"error": {"code": err.code, "message": err.message}}
        if err.param:
            body["error"]["field"] = err.param
    response = web.Response(status=err.status, body=orjson.dumps(body),
                            content_type="application/json", headers=err.headers)
    if err.status == 408:
        response.force_close()  # the rest of a body that came too slowly is not waited for
    return response


# Redis over maxmemory frees room as finished tasks reach the end of their retention, or when an
# operator raises the limit: not within a second, so clients are told to wait a little longer.
QUEUE_FULL_RETRY_S = 5

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
               400: "bad_request", 415: "unsupported_media_type"}


def error_for(request: web.Request, exc: Exception) -> web.Response:
    """The JSON answer for an exception a handler raised; re-raises what must propagate."""
    if isinstance(exc, ApiError):
        return error_response(request, exc)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason if exc.status != 413 else "request body is too large"
        # A 405 must say which methods the resource has (RFC 9110): keep aiohttp's Allow.
        kept = {h: exc.headers[h] for h in ("Allow",) if h in exc.headers}
        return error_response(request, ApiError(exc.status, code, message, headers=kept))
    if isinstance(exc, ConnectionResetError):
        # Tested before UNAVAILABLE, which holds OSError: a bare ConnectionResetError is the
        # client's socket (redis-py wraps its own socket errors in its ConnectionError).
        raise exc
    if isinstance(exc, OutOfMemoryError):
        # Our writing scripts are refused whole over maxmemory (shared/lua): nothing was stored.
        log.warning("redis_oom", path=request.path, method=request.method)
        return error_response(request, ApiError(
            503, "queue_full", "the queue is full (Redis is out of memory), retry later",
            headers={"Retry-After": str(QUEUE_FULL_RETRY_S)}))
    if isinstance(exc, UNAVAILABLE):
        # Which one: every connection of the pool stayed busy (Redis answers, but not fast
        # enough for this load), or Redis itself did not answer.
        event = ("redis_pool_exhausted" if isinstance(exc, MaxConnectionsError)
                 else "redis_unavailable")
        log.warning(event, path=request.path, error=type(exc).__name__)
        return error_response(request, ApiError(
            503, "unavailable", "the queue is unavailable, retry shortly",
            headers={"Retry-After": "1"}))
    if isinstance(exc, StoreUnavailable):
        log.warning("store_unavailable", path=request.path)
        return error_response(request, ApiError(
            503, "store_unavailable", "the store is unavailable, retry shortly",
            headers={"Retry-After": "2"}))
    log.exception("unhandled_error", path=request.path, method=request.method)
    return error_response(request, ApiError(500, "internal", "internal error"))

"""Every error leaves the edge as ``{"error": {"code", "message"}}`` with the right status:
never a 500 page or a traceback. OpenAI-compatible routes use OpenAI's shape instead."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from redis.exceptions import (
    ClusterDownError,
    MaxConnectionsError,
    OutOfMemoryError,
    SlotNotCoveredError,
    TryAgainError,
)

from services.edge.plumbing.replies import json_response
from shared import logs
from shared.redis_conn import UNAVAILABLE, ClusterUnreachable
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
                 openai_type: str | None = None, outcome: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.param = param
        self.openai_type = openai_type  # when OpenAI's differs from the status's usual one
        self.outcome = outcome  # a write that failed: "unknown" or "not_stored" (a 503)


def error_response(request: web.Request, err: ApiError) -> web.Response:
    if request.path.startswith("/v1/"):
        body = {"error": {"message": err.message, "code": err.code, "param": err.param,
                          "type": err.openai_type or _OPENAI_TYPES.get(err.status, "api_error")}}
    else:
        body = {"error": {"code": err.code, "message": err.message}}
        if err.param:
            body["error"]["field"] = err.param
    if err.outcome:
        body["error"]["outcome"] = err.outcome
    response = json_response(body, err.status, err.headers)
    if err.status == 408:
        response.force_close()  # the rest of a body that came too slowly is not waited for
    return response


# Redis over maxmemory frees room as finished tasks reach the end of their retention, or when an
# operator raises the limit: not within a second, so clients are told to wait a little longer.
QUEUE_FULL_RETRY_S = 5

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
               400: "bad_request", 415: "unsupported_media_type"}


# redis-py's words for a connection that never got to send anything: the connect failed or
# timed out, or the server had closed it before the write. Anything else (a timed-out read, a
# connection cut mid-reply) came after the command may have been sent.
_BEFORE_SENDING = ("Timeout connecting to server", "Connection closed by the server before write")


def never_sent(exc: BaseException) -> bool:
    """Whether a Redis error of :data:`UNAVAILABLE` is known to have come before the command
    was sent, so that it did not run. Unsure means no: a wrong "nothing was stored" invites a
    retry that runs the command twice."""
    if isinstance(exc, MaxConnectionsError | ClusterUnreachable | ClusterDownError
                  | TryAgainError | SlotNotCoveredError):
        # No connection was handed out (PoolExhausted among them), or the cluster refused
        # the command before running it (shared/redis_conn.py, UNAVAILABLE).
        return True
    message = str(exc)
    if message.startswith(_BEFORE_SENDING):
        return True
    # A refused or unreachable connect: "Error 111 connecting to 127.0.0.1:6379. ..."
    return isinstance(exc.__cause__, OSError) and " connecting to " in message


def unavailable_event(exc: BaseException) -> str:
    """Which one: every connection of the pool stayed busy (Redis answers, but not fast
    enough for this load), or Redis itself did not answer."""
    return ("redis_pool_exhausted" if isinstance(exc, MaxConnectionsError)
            else "redis_unavailable")


def unavailable_write(exc: BaseException, *, idempotency_key: bool) -> ApiError:
    """The 503 of a write Redis did not take or did not confirm, saying which it was."""
    if never_sent(exc):
        return ApiError(503, "unavailable", "the queue is unavailable: nothing was stored, "
                        "retry shortly", headers={"Retry-After": "1"}, outcome="not_stored")
    safe = ("Retrying with the same Idempotency-Key is safe: it answers with the task if it "
            "was stored." if idempotency_key else
            "A retry may create a second task: send an Idempotency-Key to make retries safe.")
    return ApiError(503, "unavailable", "the queue did not answer in time: the task may have "
                    f"been stored. {safe}", headers={"Retry-After": "1"}, outcome="unknown")


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
        log.warning(unavailable_event(exc), path=request.path, error=type(exc).__name__)
        return error_response(request, ApiError(
            503, "unavailable", "the queue is unavailable, retry shortly",
            headers={"Retry-After": "1"}))  # a read; a submit says more (unavailable_write)
    if isinstance(exc, StoreUnavailable):
        log.warning("store_unavailable", path=request.path)
        return error_response(request, ApiError(
            503, "store_unavailable", "the store is unavailable, retry shortly",
            headers={"Retry-After": "2"}))
    log.exception("unhandled_error", path=request.path, method=request.method)
    return error_response(request, ApiError(500, "internal", "internal error"))

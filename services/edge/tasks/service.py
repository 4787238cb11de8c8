"""The edge's operations on the queue: submit, read and cancel tasks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.edge.context import Edge
from services.edge.plumbing.errors import (
    ApiError,
    never_sent,
    unavailable_event,
    unavailable_write,
)
from services.edge.tasks.validation import Submission
from shared import logs, metrics, rollup, tasks, tracing
from shared.governor import estimate_tokens, format_duration
from shared.redis_conn import UNAVAILABLE
from shared.steps import (
    AlreadyTerminal,
    CancelledNow,
    Conflict,
    Created,
    Existing,
    Missing,
    RateLimited,
    TenantLimits,
    TooManyActive,
)
from shared.timeutil import iso, now_ms

log = logs.get("sluice.edge")
QUEUED_EVENT = orjson.dumps({"status": tasks.QUEUED}).decode()
RATE_WINDOW_MS = 60_000  # TENANT_RATE_PER_MINUTE counts submissions per fixed minute
# Idempotency keys Sluice gives its own tasks (the batch runner's lines) start with this; a
# client's key never does (views.idempotency_key refuses it with 422), so no client can take
# one before Sluice uses it: the two share the tenant's key space, never a key.
INTERNAL_KEY_PREFIX = "~"


@dataclass(frozen=True, slots=True)
class Submitted:
    id: str
    created_at: int
    existing: bool
    headers: dict[str, str] = field(default_factory=dict)  # the tenant's x-ratelimit-*


def rate_headers(rate: int, used: int, now: int) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the tenant's own submission rate (none without one):
    clients and SDKs pace themselves before a 429 comes."""
    if rate <= 0:
        return {}
    return {"x-ratelimit-limit-requests": str(rate),
            "x-ratelimit-remaining-requests": str(max(0, rate - used)),
            "x-ratelimit-reset-requests": format_duration(RATE_WINDOW_MS - now % RATE_WINDOW_MS)}


def body_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def submit(edge: Edge, tenant: str, req: Submission, idem_key: str | None,
                 task_id: str | None = None) -> Submitted:
    """``task_id``: the id the task gets if it is new (one is made otherwise)."""
    digest = body_hash(req.payload) if idem_key else ""
    if idem_key:
        known = await edge.store.get_idempotency_key(tenant, idem_key)
        if known is not None:
            return _replay(known, digest)
    task_id, created = task_id or tasks.new_task_id(), now_ms()
    s = edge.settings
    span = tracing.submit_span(task_id, tenant)
    try:
        result = await edge.steps.submit(
            task_id=task_id, tenant=tenant, request_json=orjson.dumps(req.payload),
            model=req.model, now=created, idem_key=idem_key, body_hash=digest,
            idempotency_ttl_s=s.idempotency_ttl_s, first_event=QUEUED_EVENT,
            task_ttl_s=s.task_ttl_s,
            limits=TenantLimits(s.rate_per_minute, RATE_WINDOW_MS, s.max_active_tasks),
            traceparent=tracing.traceparent(span) or tracing.client_traceparent(),
            priority=req.priority,
            cost=estimate_tokens(req.payload))
    except UNAVAILABLE as exc:
        # The script may have run though its answer never came (a read timed out after the
        # send): the 503 says whether the task may exist, so a client does not retry blindly.
        tracing.end(span, type(exc).__name__)
        log.warning(unavailable_event(exc), path="submit", error=type(exc).__name__,
                    sent=not never_sent(exc))
        raise unavailable_write(exc, idempotency_key=bool(idem_key)) from exc
    tracing.end(span, None if isinstance(result, Created) else type(result).__name__)
    match result:
        case RateLimited(retry_after_s=wait):
            raise ApiError(429, "rate_limited",
                           f"this key may submit {s.rate_per_minute} tasks per minute",
                           headers={"Retry-After": str(wait),
                                    **rate_headers(s.rate_per_minute, s.rate_per_minute,
                                                   created)})
        case TooManyActive(retry_after_s=wait):
            raise ApiError(429, "too_many_active_tasks",
                           f"this key may have {s.max_active_tasks} tasks queued or running "
                           "at once", headers={"Retry-After": str(wait)})
        case Conflict():
            raise _idempotency_conflict()
        case Existing(id=tid):
            view = await edge.steps.task_hash(tid)
            return Submitted(tid, int(view.get("created_at") or created), existing=True)
    used = result.window_used if isinstance(result, Created) else 0
    if req.deadline_at is not None:
        # The index processors sweep, so a task that waits past its deadline fails even if no
        # processor ever takes it (the provider stays paused); one more round trip, only for
        # tasks that set a deadline. Lost if the edge dies right here: the processor that takes
        # the task still checks the deadline before calling the provider. Lost too if Redis
        # fails right here: the task exists, so it is accepted (a 503 would invite a retry
        # that makes a second task).
        try:
            await edge.redis.zadd(edge.keys.deadlines, {task_id: req.deadline_at})
        except UNAVAILABLE as exc:
            log.warning("deadline_not_indexed", task_id=task_id, error=type(exc).__name__)
    metrics.child(metrics.tasks_submitted, metrics.tenant(tenant)).inc()
    rollup.add("submitted")
    if idem_key:
        try:
            await edge.store.save_idempotency_key(tenant, idem_key, task_id, digest)
        except Exception as exc:  # stored in Redis: accepted, whatever else fails
            # Redis answers replays meanwhile, and the task's holder writes the record with
            # the task's row (the key is in the task hash): it is late, never lost.
            log.warning("idempotency_key_not_stored", task_id=task_id, error=repr(exc))
    return Submitted(task_id, created, existing=False,
                     headers=rate_headers(s.rate_per_minute, used, created))


def _replay(known: tuple[str, str], digest: str) -> Submitted:
    task_id, stored = known
    if stored != digest:
        raise _idempotency_conflict()
    return Submitted(task_id, 0, existing=True)


def _idempotency_conflict() -> ApiError:
    return ApiError(409, "idempotency_conflict",
                    "this Idempotency-Key was used with a different body")


async def read(edge: Edge, tenant: str, task_id: str) -> dict[str, Any]:
    """The task as clients see it: from Redis while it is known there, else from the store."""
    view, _request = await read_with_request(edge, tenant, task_id)
    return view


async def read_with_request(edge: Edge, tenant: str,
                            task_id: str) -> tuple[dict[str, Any], str | None]:
    """The task's view and its request as stored (JSON), from the same read."""
    if not task_id.startswith("tsk_") or len(task_id) > 64:
        raise not_found()
    h = await edge.steps.task_hash(task_id)
    if h:
        if h.get("tenant") != tenant:
            raise not_found()
        return tasks.view_from_redis(h), h.get("request")
    row = await edge.store.get_task(task_id)
    if row is None or row["tenant"] != tenant or row["status"] == tasks.DELETED:
        raise not_found()
    return tasks.view_from_row(row), row.get("request")


async def cancel(edge: Edge, tenant: str, task_id: str) -> dict[str, Any]:
    result = await edge.steps.cancel(task_id=task_id, tenant=tenant, now=now_ms())
    if isinstance(result, Missing):
        await read(edge, tenant, task_id)  # 404 unless the store knows it (then terminal)
    if isinstance(result, Missing | AlreadyTerminal):
        raise ApiError(409, "already_terminal", "the task has already finished")
    status = tasks.CANCELLED if isinstance(result, CancelledNow) else "cancelling"
    return {"id": task_id, "status": status}


def not_found() -> ApiError:
    return ApiError(404, "not_found", "no such task")


def accepted_body(sub: Submitted) -> dict[str, Any]:
    return {"id": sub.id, "status": tasks.QUEUED, "created_at": iso(sub.created_at or now_ms())}

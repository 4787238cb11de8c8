"""Dead letters: tasks that failed after their last attempt, listed and re-queued by id.

The list comes from the store (durable, and Redis forgets finished tasks after the retention
time); re-queueing is one Lua script, which rebuilds the task in Redis from its row if needed.
"""

from __future__ import annotations

import re

from aiohttp import web

from services.edge.context import edge_of
from services.edge.plumbing.auth import tenant_of
from services.edge.plumbing.errors import ApiError
from services.edge.plumbing.replies import json_response
from services.edge.tasks import service
from shared import metrics, tasks
from shared.steps import Missing, NotFailed, StoredTask
from shared.timeutil import iso, now_ms

MAX_LIMIT = 500
_LIMIT = re.compile(r"[0-9]{1,4}")


async def list_dead_letters(request: web.Request) -> web.Response:
    edge = edge_of(request)
    raw = request.query.get("limit", "50")
    # ASCII digits only: str.isdigit() also takes "²", which int() then refuses.
    if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(422, "invalid_request", f"limit: an integer from 1 to {MAX_LIMIT}",
                       param="limit")
    rows = await edge.store.list_failed(tenant_of(request), int(raw))
    return json_response({"data": [{
        "id": r["id"], "model": r["model"], "attempts": r["attempts"],
        "error": tasks.loads_or_none(r["error"]), "created_at": iso(r["created_at"]),
        "failed_at": iso(r["completed_at"])} for r in rows]})


async def retry_task(request: web.Request) -> web.Response:
    return await retry(request, tenant_of(request), request.match_info["id"])


async def retry(request: web.Request, tenant: str, task_id: str) -> web.Response:
    """Re-queue ``tenant``'s failed task (the API, and the dashboard's retry button)."""
    edge = edge_of(request)
    view = await service.read(edge, tenant, task_id)  # 404 for unknown ids and other tenants
    if view["status"] != tasks.FAILED:
        raise ApiError(409, "not_failed", "only a failed task can be retried")
    row = await edge.store.get_task(task_id)
    stored = None if row is None else StoredTask(
        request=row["request"], model=row["model"] or "", created_at=int(row["created_at"]),
        fence=int(row["fence"]))
    result = await edge.steps.retry(task_id=task_id, tenant=tenant, now=now_ms(),
                                    task_ttl_s=edge.settings.task_ttl_s, stored=stored)
    if isinstance(result, Missing):
        raise service.not_found()
    if isinstance(result, NotFailed):
        raise ApiError(409, "not_failed", "only a failed task can be retried")
    metrics.tasks_requeued.inc()
    return json_response({"id": task_id, "status": tasks.QUEUED}, 202,
                         {"Location": f"/api/tasks/{task_id}"})

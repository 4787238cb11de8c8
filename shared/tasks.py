"""What a task is: statuses, and the JSON shapes clients see. Pure functions, no I/O."""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from shared.timeutil import iso

QUEUED, BATCHED, RUNNING = "queued", "batched", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
STATUSES = (QUEUED, BATCHED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
# A deleted task's store row (a tombstone, ``Store.forget_task``); never in Redis, never shown:
# every reader answers as for no row.
DELETED = "deleted"

# A /v1/responses task's context, under this key of its request (never sent to the provider).
RESPONSES = "responses"

TERMINAL_EVENT = {SUCCEEDED: "done", FAILED: "error", CANCELLED: "cancelled"}
# Event types of a task's event stream besides the terminal ones and the deltas.
EV_STATUS, EV_RESET = "status", "reset"
CANCELLED_ERROR = {"code": "cancelled", "message": "cancelled by the client"}


def new_task_id() -> str:
    """128 random bits: ids are unguessable, so knowing one proves it was handed out."""
    return "tsk_" + secrets.token_hex(16)


def unstored(request: dict[str, Any] | None) -> bool:
    """A response made with ``store: false``: nothing of it is kept once it ends. Its holder
    writes a tombstone, never its row, and lets Redis drop it soon; the edge that answers it
    forgets it at once (``services/edge/openai/responses/api.py``)."""
    context = (request or {}).get(RESPONSES)
    return isinstance(context, dict) and (context.get("echo") or {}).get("store") is False


def loads_or_none(raw: str | bytes | None) -> Any:
    if raw is None or raw == "" or raw == b"":
        return None
    return orjson.loads(raw)


def view_from_redis(h: dict[str, str]) -> dict[str, Any]:
    """The public view of a task from its Redis hash."""
    return {
        "id": h["id"],
        "status": h.get("status"),
        "model": h.get("model") or None,
        "created_at": iso(h.get("created_at")),
        "started_at": iso(h.get("started_at")),
        "completed_at": iso(h.get("completed_at")),
        "batch_id": h.get("batch_id") or None,
        "attempts": int(h.get("attempts") or 0),
        "result": loads_or_none(h.get("result")),
        "error": loads_or_none(h.get("error")),
        "metadata": _metadata(h.get("request")),
        "tries": loads_or_none(h.get("tries")) or [],
    }


def terminal_view(h: dict[str, str], *, status: str, attempts: int, result: Any, error: Any,
                  started_at: int, completed_at: int, batch_id: str | None,
                  request: dict[str, Any] | None = None,
                  tries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The view of a task its holder just finished (what complete.lua stores), from its hash
    and the run's own facts: :func:`view_from_redis`'s shape, built once. ``request``: the
    task's request, when the run parsed it already (not parsed a second time here)."""
    return {
        "id": h["id"],
        "status": status,
        "model": h.get("model") or None,
        "created_at": iso(h.get("created_at")),
        "started_at": iso(started_at),
        "completed_at": iso(completed_at),
        "batch_id": batch_id,
        "attempts": attempts,
        "result": result,
        "error": error,
        "metadata": (request.get("metadata") if request is not None
                     else _metadata(h.get("request"))),
        "tries": tries if tries is not None else loads_or_none(h.get("tries")) or [],
    }


def view_from_row(row: dict[str, Any]) -> dict[str, Any]:
    """The public view of a task from its store row (after Redis forgot it)."""
    result = None
    if row["status"] == SUCCEEDED or row.get("content") or row.get("reasoning_content"):
        result = result_dict(row.get("content") or "", row.get("reasoning_content") or "",
                             row.get("finish_reason"), _usage_from_row(row))
        if row.get("result_extra"):  # tool calls, logprobs, choices, usage details...
            result.update(orjson.loads(row["result_extra"]))
        if row.get("provider"):  # who answered (rows from before have no such column set)
            result["provider"], result["model"] = row["provider"], row.get("provider_model")
    return {
        "id": row["id"],
        "status": row["status"],
        "model": row.get("model"),
        "created_at": iso(row.get("created_at")),
        "started_at": iso(row.get("started_at")),
        "completed_at": iso(row.get("completed_at")),
        "batch_id": row.get("batch_id"),
        "attempts": int(row.get("attempts") or 0),
        "result": result,
        "error": loads_or_none(row.get("error")),
        "metadata": _metadata(row.get("request")),
        "tries": loads_or_none(row.get("tries")) or [],
    }


def result_dict(content: str, reasoning: str, finish_reason: str | None,
                usage: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "content": content,
        "reasoning_content": reasoning,
        "finish_reason": finish_reason,
        "usage": usage,
    }


# The result's members its store row keeps in columns of their own.
_RESULT_COLUMNS = frozenset({"content", "reasoning_content", "finish_reason"})
_USAGE_COUNTS = frozenset({"prompt_tokens", "completion_tokens", "total_tokens"})


def stored_extras(result: dict[str, Any]) -> str | None:
    """The JSON a store row keeps of ``result`` beyond its columns (``result_extra``): tool
    calls, logprobs, refusal, fingerprint, every choice, and usage when it has details."""
    extras = {k: v for k, v in result.items() if k not in _RESULT_COLUMNS and k != "usage"}
    usage = result.get("usage")
    if isinstance(usage, dict) and not _USAGE_COUNTS.issuperset(usage):
        extras["usage"] = usage
    return orjson.dumps(extras).decode() if extras else None


def _usage_from_row(row: dict[str, Any]) -> dict[str, int] | None:
    if row.get("total_tokens") is None:
        return None
    return {
        "prompt_tokens": int(row.get("prompt_tokens") or 0),
        "completion_tokens": int(row.get("completion_tokens") or 0),
        "total_tokens": int(row.get("total_tokens") or 0),
    }


def _metadata(request_json: str | None) -> Any:
    if not request_json:
        return None
    return orjson.loads(request_json).get("metadata")

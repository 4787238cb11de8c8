"""A task's whole story for the dashboard's task page: a timeline of its status changes and
attempts, each with its time (a stream entry's id is its time in ms), read from its event
stream and its hash.

Each attempt starts at ``running`` (the first) or at a ``reset`` with its number (a retry;
``rate_limited`` when a 429 sent it back to the queue), and ends where the next one starts or
at the terminal event; its latency and its first token's time are read off the stream. The
processor is known for the last run only (the task's hash keeps the latest holder), the error
for the last attempt only. Issue 26 records each attempt (its processor, provider, latency,
error) with the task: ``attempts`` here is the place they go."""

from __future__ import annotations

from typing import Any

from shared import tasks
from shared.timeutil import iso

_DELTAS = frozenset({"content", "reasoning", "refusal", "tool_calls"})
_TERMINAL = {v: k for k, v in tasks.TERMINAL_EVENT.items()}  # event type -> status


def at_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def timeline(events: list[tuple[str, dict[str, str]]], h: dict[str, str],
             view: dict[str, Any]) -> dict[str, Any]:
    """``events``: the raw stream entries (id, fields); ``h``: the task hash (empty once only
    the store knows the task); ``view``: the task as its tenant reads it."""
    created = _ms(view.get("created_at"))
    steps: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None

    def step(at: int, what: str, **more: Any) -> None:
        steps.append({"at": iso(at), "since_submit_ms": at - created if created else None,
                      "event": what, **more})

    def end_attempt(at: int, outcome: str) -> None:
        nonlocal current
        if current is not None:
            current.update(ended_at=iso(at), latency_ms=at - current["_start"], outcome=outcome)
            attempts.append(current)
            current = None

    for entry_id, fields in events:
        kind, at = fields.get("e"), at_ms(entry_id)
        data = tasks.loads_or_none(fields.get("d")) or {}
        if kind in _DELTAS:
            if current is not None and current["first_token_ms"] is None:
                current["first_token_ms"] = at - current["_start"]
                step(at, "first token", attempt=current["number"])
            continue
        if kind == tasks.EV_STATUS:
            status = data.get("status")
            step(at, f"status {status}", status=status, batch_id=data.get("batch_id"))
            if status == tasks.RUNNING and current is None:
                current = _attempt(len(attempts) + 1, at)
            continue
        if kind == tasks.EV_RESET:
            if data.get("rate_limited"):
                end_attempt(at, "rate limited (429): back to the queue")
                step(at, "rate limited: back to the queue in its place")
                current = None
            else:
                end_attempt(at, "failed, retried")
                current = _attempt(int(data.get("attempt") or len(attempts) + 1), at)
                step(at, f"attempt {current['number']} started (the previous one failed)",
                     attempt=current["number"])
            continue
        if kind in _TERMINAL:
            status = _TERMINAL[kind]
            end_attempt(at, status)
            step(at, f"status {status}", status=status, error=view.get("error")
                 if status != tasks.SUCCEEDED else None)
    if current is not None:  # still running
        current["outcome"] = "running"
        attempts.append(current)
    if attempts:
        attempts[-1]["processor"] = h.get("processor") or None
        if view.get("status") == tasks.FAILED:
            attempts[-1]["error"] = view.get("error")
    for a in attempts:
        a.pop("_start", None)
    if not steps or steps[0]["event"] != "status queued":
        steps.insert(0, {"at": view.get("created_at"), "since_submit_ms": 0,
                         "event": "submitted"})
    return {"timeline": steps, "attempts": attempts}


def _attempt(number: int, start: int) -> dict[str, Any]:
    return {"number": number, "started_at": iso(start), "ended_at": None, "latency_ms": None,
            "first_token_ms": None, "outcome": None, "processor": None, "provider": None,
            "error": None, "_start": start}


def _ms(value: Any) -> int | None:
    if not value:
        return None
    from datetime import datetime

    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)

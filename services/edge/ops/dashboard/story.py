"""A task's whole story for the dashboard's task page: a timeline of its status changes and
attempts, each with its time (a stream entry's id is its time in ms), read from its event
stream, its hash and its recorded provider calls (``tries``, issue 26).

Each provider call the processors recorded is an attempt: its provider, route model,
processor, start, end (so its latency), status and error; its first token's time is read off
the stream. Each is also a step of the timeline, at its end. A call still on its way is not
recorded yet: the stream says it runs (from ``running``, or a ``reset`` with its number).
Without recorded calls (a task from before they were), the attempts are read off the stream
alone: each starts at ``running`` (the first) or at a ``reset`` with its number (a retry;
``rate_limited`` when a 429 sent it back to the queue) and ends where the next one starts or
at the terminal event; the processor is known for the last run only (the task's hash keeps
the latest holder), the error for the last attempt only."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared import tasks
from shared.timeutil import iso

_DELTAS = frozenset({"content", "reasoning", "refusal", "tool_calls"})
_TERMINAL = {v: k for k, v in tasks.TERMINAL_EVENT.items()}  # event type -> status


def at_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def timeline(events: list[tuple[str, dict[str, str]]], h: dict[str, str],
             view: dict[str, Any], *, processors: bool = True) -> dict[str, Any]:
    """``events``: the raw stream entries (id, fields); ``h``: the task hash (empty once only
    the store knows the task); ``view``: the task as its tenant reads it; ``processors``:
    name the processors (the operator's: not for a tenant's key)."""
    created = _ms(view.get("created_at"))
    steps: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    ended_ms: int | None = None  # the terminal event's time: the story's last step

    def step(at: int, what: str, **more: Any) -> None:
        steps.append({"at": iso(at), "since_submit_ms": at - created if created else None,
                      "event": what, **more, "_ms": at})

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
            ended_ms = at
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
    tried = [t for t in view.get("tries") or [] if isinstance(t, dict)]
    if tried:
        attempts, told = _recorded(tried, attempts, view.get("status"), h)
        # A recorded call's first token is told with the call (an answer that came whole is
        # written to the stream only after the call ended: its own step would come after).
        steps = [s for s in steps if not (s["event"] == "first token" and s["_ms"] in told)]
        for a in attempts:
            if a["status"] == "running":
                continue  # on its way: "status running" or its reset said it began
            where = f" on {a['provider']} ({a['model']})" if a["provider"] is not None else ""
            # A call's end is the processor's clock, the task's end Redis's: a call that ended
            # with the task may be recorded a few ms after it, and is told at the end.
            end = a["_end"] if ended_ms is None else min(a["_end"], ended_ms)
            step(end, f"attempt {a['number']}{where}: {a['status']}",
                 attempt=a["number"], provider=a["provider"], model=a["model"],
                 processor=a["processor"], latency_ms=a["latency_ms"],
                 first_token_ms=a["first_token_ms"], status=a["status"], error=a["error"])
        # Stable: a call's end after what came with it; the task's end after all at its ms.
        steps.sort(key=lambda s: (s["_ms"], s["_ms"] == ended_ms and "attempt" not in s))
    for a in attempts:
        a.pop("_start", None)
        a.pop("_end", None)
        if not processors:
            a["processor"] = None
    for s in steps:
        s.pop("_ms", None)
        if not processors and "processor" in s:
            s["processor"] = None
    if not steps or steps[0]["event"] != "status queued":
        steps.insert(0, {"at": view.get("created_at"), "since_submit_ms": 0,
                         "event": "submitted"})
    return {"timeline": steps, "attempts": attempts}


def _attempt(number: int, start: int) -> dict[str, Any]:
    return {"number": number, "started_at": iso(start), "ended_at": None, "latency_ms": None,
            "first_token_ms": None, "outcome": None, "status": None, "processor": None,
            "provider": None, "model": None, "error": None, "_start": start}


_SLACK_MS = 50  # the stream's times are Redis's clock, a call's the processor's


def _recorded(tried: list[dict[str, Any]], seen: list[dict[str, Any]], status: Any,
              h: dict[str, str]) -> tuple[list[dict[str, Any]], set[int]]:
    """The attempts from the recorded calls, each with its first token's time off the stream;
    then the call on its way, when the stream says one runs that no record covers yet. Also
    the first tokens' times (ms) the recorded calls took."""
    firsts = [a["_start"] + a["first_token_ms"] for a in seen
              if a["first_token_ms"] is not None]
    taken: set[int] = set()
    out: list[dict[str, Any]] = []
    for n, t in enumerate(tried, 1):
        start, end = _ms(t.get("started_at")), _ms(t.get("ended_at"))
        a = _attempt(n, start or 0)
        nxt = tried[n] if n < len(tried) else None
        a.update(started_at=t.get("started_at"), ended_at=t.get("ended_at"),
                 status=t.get("status"), processor=t.get("processor"),
                 provider=t.get("provider"), model=t.get("model"), error=t.get("error"),
                 outcome=_outcome(t, nxt, status), _end=end or start or 0)
        if start is not None and end is not None:
            a["latency_ms"] = max(0, end - start)
            # Its first token: the stream's first after its start, before the next call's (an
            # answer that came whole reaches the stream after the call ended).
            until = _ms(nxt.get("started_at")) if nxt is not None else None
            first = [f for f in firsts if start - _SLACK_MS <= f
                     and (until is None or f < until)]
            if first:
                # An answer that came whole reached the stream after its call ended: its first
                # token had come by the end (at the latest), which is what is said then.
                a["first_token_ms"] = max(0, min(min(first), end) - start)
                taken.add(min(first))
        out.append(a)
    last_end = max((a["_end"] for a in out), default=0)
    if status not in tasks.TERMINAL and seen and seen[-1]["outcome"] == "running" \
            and seen[-1]["_start"] >= last_end - _SLACK_MS:
        on_way = {**seen[-1], "number": len(out) + 1, "status": "running",
                  "processor": h.get("processor") or None, "_end": seen[-1]["_start"]}
        out.append(on_way)
    return out, taken


def _outcome(t: dict[str, Any], nxt: dict[str, Any] | None, status: Any) -> str:
    """A recorded call's end in words: what it was, and what came of it for the task."""
    s = str(t.get("status") or "")
    if s == "rate_limited":
        return "rate limited (429): back to the queue"
    if s in ("failed", "error"):
        if nxt is not None:
            moved = nxt.get("provider") != t.get("provider")
            return f"failed, moved on to {nxt.get('provider')}" if moved else "failed, retried"
        return "failed" if status in tasks.TERMINAL else "failed, retried"
    return s or "unknown"


def _ms(value: Any) -> int | None:
    if not value:
        return None
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)

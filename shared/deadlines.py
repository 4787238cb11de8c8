"""A task's deadline: the request field ``deadline`` (seconds from submit, or an RFC 3339
time), else the processor's ``TASK_DEADLINE_S``. Pure functions, no I/O."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

MAX_DEADLINE_S = 30 * 86_400
_WHAT = "must be a number of seconds or an RFC 3339 time"


class DeadlineError(ValueError):
    """The field is not a deadline; the message says what it should be."""


def _to_ms(value: Any, base_ms: int) -> int:
    if isinstance(value, bool):
        raise DeadlineError(_WHAT)
    if isinstance(value, int | float):
        if not math.isfinite(value) or value <= 0:
            raise DeadlineError("must be a positive number of seconds")
        return base_ms + math.ceil(value * 1000)
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
        except ValueError:
            raise DeadlineError(_WHAT) from None
        if when.tzinfo is None:
            raise DeadlineError("an RFC 3339 time needs its offset (Z or +hh:mm)")
        return math.floor(when.timestamp() * 1000)
    raise DeadlineError(_WHAT)


def parse(value: Any, now_ms: int) -> int:
    """Validate a request's ``deadline`` at submit and return it as epoch ms. A number of
    seconds is at most MAX_DEADLINE_S; a time may be anything, even past (then the task is
    stored and fails at once, deadline_exceeded, never sent: as it would a moment later)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > MAX_DEADLINE_S:
        raise DeadlineError(f"at most {MAX_DEADLINE_S} seconds")
    return _to_ms(value, now_ms)


def deadline_at(request: dict[str, Any], created_ms: int, default_s: float) -> int:
    """When a stored task's deadline passes (epoch ms)."""
    value = request.get("deadline")
    if value is None:
        return created_ms + math.ceil(default_s * 1000)
    try:
        return _to_ms(value, created_ms)
    except DeadlineError:
        return created_ms + math.ceil(default_s * 1000)  # validated at submit: not reached

"""Clocks: epoch milliseconds for what is stored, ISO 8601 for what clients read."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso(ms: int | str | None) -> str | None:
    if ms is None or ms == "":
        return None
    stamp = datetime.fromtimestamp(int(ms) / 1000, tz=UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")

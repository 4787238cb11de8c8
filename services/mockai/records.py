"""Per-request records, exposed at GET /mock/requests so tests can see what happened.

A record holds counts and a reference to the generated token tuples rather than growing
strings: the text "sent so far" is materialized only when someone asks for it, which
keeps the streaming hot path to two integer stores per write.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

MAX_RECORDS = 10_000


class RequestRecord:
    __slots__ = (
        "_content",
        "_reasoning",
        "body",
        "content_sent",
        "disconnected",
        "disconnected_at",
        "fault",
        "fault_key",
        "finish_reason",
        "finished_at",
        "finished_monotonic",
        "id",
        "limit",
        "outcome",
        "ratelimit",
        "reasoning_sent",
        "started_at",
        "started_monotonic",
        "status",
        "stream",
        "tag",
    )

    def __init__(self, request_id: str) -> None:
        self.id = request_id
        self.tag: str | None = None
        self.body: Any = None  # the request body, when recording was asked for
        self.fault_key: str | None = None
        self.fault: str | None = None  # kind of the fault that actually fired
        self.limit: str | None = None  # the limit that refused it (limits.py), if one did
        self.ratelimit: dict[str, str] = {}  # x-ratelimit-* headers it was answered with
        self.stream = False
        self.status = 200
        # in_progress | completed | rejected | error_status | cut | stream_error |
        # disconnected | rate_limited
        self.outcome = "in_progress"
        self.finish_reason: str | None = None
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self.finished_at: float | None = None
        self.finished_monotonic: float | None = None
        self.disconnected = False
        self.disconnected_at: float | None = None
        self._reasoning: tuple[str, ...] = ()
        self._content: tuple[str, ...] = ()
        self.reasoning_sent = 0
        self.content_sent = 0

    def set_tokens(self, reasoning: tuple[str, ...], content: tuple[str, ...]) -> None:
        self._reasoning = reasoning
        self._content = content

    def finish(self, outcome: str, status: int | None = None) -> None:
        # First ending wins: a cancellation racing our own transport.close() after a
        # `cut` fault must not relabel the request as a client disconnect.
        if self.finished_at is not None:
            return
        self.outcome = outcome
        if status is not None:
            self.status = status
        self.finished_at = time.time()
        self.finished_monotonic = time.monotonic()

    def client_gone(self) -> bool:
        """Mark a client disconnect; False if the request had already ended otherwise."""
        if self.finished_at is not None:
            return False
        self.disconnected = True
        self.finish("disconnected")
        self.disconnected_at = self.finished_at
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tag": self.tag,
            "fault_key": self.fault_key,
            "fault": self.fault,
            "limit": self.limit,
            "ratelimit": self.ratelimit,
            "stream": self.stream,
            "status": self.status,
            "outcome": self.outcome,
            "finish_reason": self.finish_reason,
            "started_at": self.started_at,
            "started_monotonic": self.started_monotonic,
            "finished_at": self.finished_at,
            "finished_monotonic": self.finished_monotonic,
            "disconnected": self.disconnected,
            "disconnected_at": self.disconnected_at,
            "tokens_sent": self.reasoning_sent + self.content_sent,
            "reasoning_tokens_sent": self.reasoning_sent,
            "content_tokens_sent": self.content_sent,
            "reasoning": "".join(self._reasoning[: self.reasoning_sent]),
            "content": "".join(self._content[: self.content_sent]),
            "body": self.body,
        }


class RecordStore:
    """The last MAX_RECORDS records; older ones fall off so a long benchmark stays bounded."""

    __slots__ = ("_records",)

    def __init__(self, maxlen: int = MAX_RECORDS) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=maxlen)

    def add(self, record: RequestRecord) -> None:
        self._records.append(record)

    def clear(self) -> int:
        n = len(self._records)
        self._records.clear()
        return n

    def to_json(self, tag: str | None = None) -> list[dict[str, Any]]:
        return [r.to_json() for r in self._records if tag is None or r.tag == tag]

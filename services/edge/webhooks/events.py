"""Webhook events: their types, their thin payloads, and the outbox rows that carry them."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import orjson

from services.edge.openai.responses import protocol
from services.edge.webhooks.store import Delivery, Endpoint
from shared import tasks

TASK_EVENTS = {"succeeded": "task.succeeded", "failed": "task.failed",
               "cancelled": "task.cancelled"}
BATCH_EVENTS = {"completed": "batch.completed", "failed": "batch.failed",
                "expired": "batch.expired", "cancelled": "batch.cancelled"}
# A response's task ends with OpenAI's event of its status instead of a task.* event, as the
# subject a response id (resp_...): response.completed, .incomplete, .failed, .cancelled.
RESPONSE_EVENTS = tuple(dict.fromkeys(protocol.WEBHOOK_EVENT.values()))
TEST_EVENT = "webhook.test"
EVENT_TYPES = (*TASK_EVENTS.values(), *BATCH_EVENTS.values(), *RESPONSE_EVENTS)
TASK_URL_TARGET = "task"  # endpoint_id of a delivery to a task's own webhook_url


@dataclass(frozen=True, slots=True)
class Finished:
    """The event a finished task gets: its type, its subject's id, the status it reports."""
    kind: str
    subject_id: str
    status: str


def task_event(task_id: str, status: str) -> Finished | None:
    """A finished task's event (None for a status that has none: a tombstone's)."""
    kind = TASK_EVENTS.get(status)
    return Finished(kind, task_id, status) if kind is not None else None


def response_event(task_id: str, status: str, finish_reason: str | None) -> Finished | None:
    """A finished response's event, by its response status: a succeeded task whose provider
    stopped for length (or a content filter) is an incomplete response."""
    if status == tasks.SUCCEEDED:
        incomplete = protocol.incomplete_reason(finish_reason) is not None
        mapped = protocol.INCOMPLETE if incomplete else protocol.COMPLETED
    elif status == tasks.FAILED:
        mapped = protocol.FAILED
    elif status == tasks.CANCELLED:
        mapped = protocol.CANCELLED
    else:
        return None
    return Finished(protocol.WEBHOOK_EVENT[mapped], protocol.response_id(task_id), mapped)


def _digest(*parts: str) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()


def deliveries(tenant: str, event_type: str, subject_id: str, data: dict[str, object],
               targets: list[tuple[str, str]], now_ms: int | None = None,
               nonce: str = "") -> list[Delivery]:
    """One outbox row per target (endpoint id, url) for one event. The event id and each
    delivery id (the ``webhook-id``) are derived from the event and the target, so the same
    event queued twice, by a scanner that restarted, is the same row."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    event_id = "evt_" + _digest(event_type, subject_id, nonce)[:24]
    payload = orjson.dumps({"id": event_id, "type": event_type, "created_at": now_ms // 1000,
                            "data": {"id": subject_id, **data}}).decode()
    return [Delivery("msg_" + _digest(event_id, endpoint_id, url)[:32], tenant, endpoint_id,
                     url, event_type, payload, 0, now_ms)
            for endpoint_id, url in targets]


def subscribed(endpoints: list[Endpoint], event_type: str) -> list[tuple[str, str]]:
    return [(e.id, e.url) for e in endpoints if event_type in e.events]

"""Webhook events: their types, their thin payloads, and the outbox rows that carry them."""

from __future__ import annotations

import hashlib
import time

import orjson

from services.edge.webhooks.store import Delivery, Endpoint

TASK_EVENTS = {"succeeded": "task.succeeded", "failed": "task.failed",
               "cancelled": "task.cancelled"}
BATCH_EVENTS = {"completed": "batch.completed", "failed": "batch.failed",
                "expired": "batch.expired", "cancelled": "batch.cancelled"}
TEST_EVENT = "webhook.test"
EVENT_TYPES = (*TASK_EVENTS.values(), *BATCH_EVENTS.values())
TASK_URL_TARGET = "task"  # endpoint_id of a delivery to a task's own webhook_url


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

"""Webhook settings, read with the edge's (the edge sends them)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import Env


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    allow_private: bool       # loopback/private targets: for tests and closed networks only
    retry_base_s: float       # first retry after this; doubles each time
    retry_cap_s: float        # no wait between attempts is longer
    give_up_after_s: int      # no attempt starts later than this after the event
    connect_timeout_s: float
    total_timeout_s: float
    body_cap_bytes: int       # a receiver's answer is read up to this many bytes
    rotation_grace_s: int     # the old secret still signs this long after a rotation
    tick_s: float
    lease_ms: int
    endpoint_concurrency: int  # deliveries in flight to one endpoint (or one task URL)
    tenant_concurrency: int    # deliveries in flight to one tenant's targets, all together
    max_in_flight: int         # deliveries in flight from this edge, all tenants together

    @classmethod
    def from_env(cls, env: Env) -> WebhookSettings:
        return cls(
            allow_private=env.flag("WEBHOOK_ALLOW_PRIVATE", False),
            retry_base_s=env.number("WEBHOOK_RETRY_BASE_S", 5.0, min_value=0.001),
            retry_cap_s=env.number("WEBHOOK_RETRY_CAP_S", 2 * 3600.0, min_value=0.001),
            give_up_after_s=env.integer("WEBHOOK_GIVE_UP_AFTER_S", 86_400, min_value=1),
            connect_timeout_s=env.number("WEBHOOK_CONNECT_TIMEOUT_S", 3.0, min_value=0.01),
            total_timeout_s=env.number("WEBHOOK_TIMEOUT_S", 10.0, min_value=0.01),
            body_cap_bytes=env.integer("WEBHOOK_BODY_CAP_BYTES", 4096, min_value=0),
            rotation_grace_s=env.integer("WEBHOOK_ROTATION_GRACE_S", 86_400, min_value=0),
            tick_s=env.number("WEBHOOK_TICK_S", 0.5, min_value=0.01),
            lease_ms=env.integer("WEBHOOK_LEASE_MS", 10_000, min_value=100),
            endpoint_concurrency=env.integer("WEBHOOK_ENDPOINT_CONCURRENCY", 2, min_value=1,
                                             max_value=100),
            tenant_concurrency=env.integer("WEBHOOK_TENANT_CONCURRENCY", 10, min_value=1,
                                           max_value=1000),
            max_in_flight=env.integer("WEBHOOK_MAX_IN_FLIGHT", 100, min_value=1,
                                      max_value=1000),
        )

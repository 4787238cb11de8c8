"""Edge settings, read once from the environment."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from services.edge.batch_settings import BatchApiSettings
from services.webhooks.settings import WebhookSettings
from shared.config import Batching, Common, ConfigError, Env, Provider


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    common: Common
    batching: Batching
    provider: Provider
    host: str
    port: int
    api_keys: dict[str, str]  # key -> tenant; empty means the edge is open
    max_body_bytes: int
    max_messages: int
    max_text_chars: int
    max_tokens_limit: int
    max_metadata_bytes: int
    task_ttl_s: int
    retention_s: int
    idempotency_ttl_s: int
    rate_per_minute: int
    max_active_tasks: int
    keepalive_s: float
    stream_readers: int  # Redis connections for live event reads (services/edge/feeds.py)
    shutdown_timeout_s: float
    batch_api: BatchApiSettings
    webhooks: WebhookSettings

    @classmethod
    def from_env(cls, env: Env | None = None) -> EdgeSettings:
        env = env or Env()
        return cls(
            common=Common.from_env(env),
            batching=Batching.from_env(env),
            provider=Provider.from_env(env),
            host=env.text("EDGE_HOST", "0.0.0.0"),
            port=env.integer("EDGE_PORT", 8080, min_value=0, max_value=65535),
            api_keys=_api_keys(env),
            max_body_bytes=env.integer("MAX_BODY_BYTES", 1 << 20, min_value=1024),
            max_messages=env.integer("MAX_MESSAGES", 256, min_value=1),
            max_text_chars=env.integer("MAX_TEXT_CHARS", 400_000, min_value=1),
            max_tokens_limit=env.integer("MAX_TOKENS_LIMIT", 65_536, min_value=1),
            max_metadata_bytes=env.integer("MAX_METADATA_BYTES", 4096, min_value=2),
            task_ttl_s=env.integer("TASK_TTL_S", 7 * 86_400, min_value=60),
            retention_s=env.integer("EVENTS_RETENTION_S", 3600, min_value=1),
            idempotency_ttl_s=env.integer("IDEMPOTENCY_TTL_S", 86_400, min_value=60),
            rate_per_minute=env.integer("TENANT_RATE_PER_MINUTE", 6000, min_value=0),
            max_active_tasks=env.integer("TENANT_MAX_ACTIVE", 10_000, min_value=0),
            keepalive_s=env.number("SSE_KEEPALIVE_S", 15.0, min_value=0.01),
            stream_readers=env.integer("EDGE_STREAM_READERS", 512, min_value=1),
            shutdown_timeout_s=env.number("EDGE_SHUTDOWN_TIMEOUT_S", 10.0, min_value=0),
            batch_api=BatchApiSettings.from_env(env),
            webhooks=WebhookSettings.from_env(env),
        )

    @property
    def open_access(self) -> bool:
        return not self.api_keys


def _api_keys(env: Env) -> dict[str, str]:
    text = env.optional("EDGE_API_KEYS") or ""
    path = env.optional("EDGE_API_KEYS_FILE")
    if path:
        try:
            text += "\n" + Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"EDGE_API_KEYS_FILE: cannot read {path}: {exc.strerror}") from None
    keys: dict[str, str] = {}
    for item in text.replace(",", "\n").splitlines():
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        key, sep, tenant = item.partition(":")
        key, tenant = key.strip(), tenant.strip()
        if not sep or not key or not tenant:
            raise ConfigError("EDGE_API_KEYS: expected key:tenant pairs separated by commas")
        if not _KEY.fullmatch(key):  # the message never repeats the key
            raise ConfigError("EDGE_API_KEYS: a key must be visible ASCII with no spaces")
        if not _TENANT.fullmatch(tenant):
            raise ConfigError(f"EDGE_API_KEYS: tenant {tenant!r} must be 1 to 64 letters, "
                              "digits, '.', '_' or '-'")
        keys[key] = tenant
    return keys


# Tenants name Redis keys and store rows: a small alphabet keeps them unambiguous.
_TENANT = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KEY = re.compile(r"[!-~]+")

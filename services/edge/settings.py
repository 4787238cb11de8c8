"""Edge settings, read once from the environment."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from services.edge.openai.batch.settings import BatchApiSettings
from services.edge.webhooks.settings import WebhookSettings
from shared import providers, redis_conn
from shared.config import Batching, Common, ConfigError, Env, Provider, Secret
from shared.metrics import MetricsSettings
from shared.providers import MAX_MODEL_CHARS, Routing, valid_model_name


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    common: Common
    batching: Batching
    provider: Provider
    host: str
    port: int
    api_keys: Secret[dict[str, str]]  # key -> tenant; empty means the edge is open
    admin_keys: Secret[dict[str, str]]  # EDGE_ADMIN_KEYS: key -> 'admin'; /metrics, dashboard
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
    stream_readers: int  # connections for live event reads, 100 streams each (edge/feeds.py)
    shutdown_timeout_s: float
    store_check_interval_s: float  # /api/health's write probe and quick_check, at most this often
    body_timeout_s: float  # a request body must have arrived within this (else 408)
    allow_compressed_bodies: bool  # Content-Encoding gzip/deflate accepted (else 415)
    redis_connections: int  # the main pool: commands wait for a free one ...
    redis_wait_s: float  # ... this long at most, then 503 (logged as pool exhausted)
    redis_timeout_s: float  # a command Redis has not answered in this long: 503, outcome unknown
    models: tuple[str, ...]  # AI_MODELS: the models a request may name; AI_MODEL is the default
    routing: Routing  # PROVIDERS_FILE's providers and models, or the one of AI_BASE_URL
    metrics: MetricsSettings
    dashboard_show_prompts: bool
    log_polls: bool  # LOG_POLLS: an access line for scrapes and the dashboard's reads too
    batch_api_on: bool  # BATCH_API: /v1/files, /v1/batches and webhooks
    batch_api: BatchApiSettings
    webhooks: WebhookSettings
    # RESPONSES_HOSTED_TOOLS: /v1/responses leaves out the tools a Chat Completions provider
    # cannot run (web_search, mcp, ...) and names them in a header ("omit"), or refuses the
    # request naming them ("refuse").
    responses_hosted_tools: str = "omit"

    @classmethod
    def from_env(cls, env: Env | None = None) -> EdgeSettings:
        env = env or Env()
        env.note("PROVIDERS_FILE", None)
        from_file = env.raw("PROVIDERS_FILE") is not None
        provider = Provider.from_env(env, model_required=not from_file)
        routing = providers.from_env(env, provider, need_keys=False)
        if from_file:  # the file's first model is the default of a request without one
            provider = dataclasses.replace(provider, ai_model=routing.default_model)
        return cls(
            common=Common.from_env(env),
            batching=Batching.from_env(env),
            provider=provider,
            host=env.text("EDGE_HOST", "0.0.0.0"),
            port=env.integer("EDGE_PORT", 8080, min_value=0, max_value=65535),
            api_keys=Secret(_api_keys(env)),
            admin_keys=Secret(_admin_keys(env)),
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
            store_check_interval_s=env.number("STORE_CHECK_INTERVAL_S", 30.0, min_value=0),
            body_timeout_s=env.number("EDGE_BODY_TIMEOUT_S", 30.0, min_value=0.01),
            allow_compressed_bodies=env.flag("EDGE_ALLOW_COMPRESSED_BODIES", False),
            # Few: the main pool only carries short commands (submits go together, live
            # streams read on a pool of their own), and a connection costs ~14 KiB in the edge
            # and ~22 KiB in redis-server. At 256, 200 clients opening event streams at once
            # grew it to 200 connections, kept: a third of the edge's memory per watched stream
            # and half of redis-server's (bench long_stream).
            redis_connections=env.integer("EDGE_REDIS_CONNECTIONS", 16, min_value=1),
            redis_wait_s=env.number("EDGE_REDIS_WAIT_S", 5.0, min_value=0.001),
            redis_timeout_s=env.number("EDGE_REDIS_TIMEOUT_S", redis_conn.SOCKET_TIMEOUT_S,
                                       min_value=0.001),
            models=routing.model_names if from_file else _models(env, provider.ai_model),
            routing=routing,
            metrics=MetricsSettings.from_env(env),
            dashboard_show_prompts=env.flag("DASHBOARD_SHOW_PROMPTS", False),
            log_polls=env.flag("LOG_POLLS", False),
            batch_api_on=env.flag("BATCH_API", True),
            batch_api=BatchApiSettings.from_env(env),
            webhooks=WebhookSettings.from_env(env),
            responses_hosted_tools=env.choice("RESPONSES_HOSTED_TOOLS", "omit",
                                              ("omit", "refuse")),
        )

    @property
    def open_access(self) -> bool:
        return not self.api_keys.get()

    @property
    def open_admin(self) -> bool:
        """No key of any kind: /metrics and the dashboard are open, like the rest."""
        return not self.api_keys.get() and not self.admin_keys.get()


def _models(env: Env, default: str) -> tuple[str, ...]:
    raw = env.optional("AI_MODELS")
    if raw is None:
        return (default,)
    models = tuple(dict.fromkeys(m.strip() for m in raw.split(",") if m.strip()))
    for model in models:
        if not valid_model_name(model):
            raise ConfigError(f"AI_MODELS: {model!r} must be at most {MAX_MODEL_CHARS} "
                              "characters with no control characters")
    if default not in models:
        raise ConfigError(f"AI_MODELS: must include AI_MODEL ({default!r}), the model a "
                          "request without `model` gets")
    return models


def _api_keys(env: Env) -> dict[str, str]:
    text = env.optional("EDGE_API_KEYS", secret=True) or ""
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


def _admin_keys(env: Env) -> dict[str, str]:
    raw = env.optional("EDGE_ADMIN_KEYS", secret=True) or ""
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    for key in keys:
        if not _KEY.fullmatch(key):  # the message never repeats the key
            raise ConfigError("EDGE_ADMIN_KEYS: a key must be visible ASCII with no spaces")
    return dict.fromkeys(keys, "admin")


# Tenants name Redis keys and store rows: a small alphabet keeps them unambiguous.
_TENANT = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KEY = re.compile(r"[!-~]+")

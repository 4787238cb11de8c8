"""Processor settings, read once from the environment."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from shared import providers
from shared.config import Batching, Common, Env, Provider
from shared.governor import Limits
from shared.healthcheck import default_name
from shared.metrics import MetricsSettings
from shared.providers import Routing


@dataclass(frozen=True, slots=True)
class ProcessorSettings:
    common: Common
    batching: Batching
    provider: Provider
    name: str
    concurrency: int
    max_attempts: int
    retry_base_s: float
    retry_cap_s: float
    retry_after_cap_s: float
    retention_s: int
    unstored_retention_s: int
    drain_s: float
    heartbeat_s: float
    reclaim_interval_s: float
    governor: bool
    limits: Limits
    task_deadline_s: float
    metrics: MetricsSettings
    routing: Routing  # PROVIDERS_FILE's providers and routes, or the one of AI_BASE_URL
    breaker: BreakerSettings

    @classmethod
    def from_env(cls, env: Env | None = None) -> ProcessorSettings:
        env = env or Env()
        batching = Batching.from_env(env)
        retry_after_cap_s = env.number("RETRY_AFTER_CAP_S", 60.0, min_value=0)
        env.note("PROVIDERS_FILE", None)
        from_file = env.raw("PROVIDERS_FILE") is not None
        provider = Provider.from_env(env, model_required=not from_file)
        limits = Limits(
            max_concurrency=env.integer("PROVIDER_MAX_CONCURRENCY", 0, min_value=0),
            rpm=env.integer("PROVIDER_RPM", 0, min_value=0),
            tpm=env.integer("PROVIDER_TPM", 0, min_value=0),
            initial_window=env.integer("GOVERNOR_INITIAL_WINDOW", 8, min_value=1,
                                       max_value=100_000),
            max_backoff_ms=int(1000 * env.number("GOVERNOR_MAX_BACKOFF_S", 30.0,
                                                 min_value=0.1)),
            reset_cap_ms=int(1000 * retry_after_cap_s))
        routing = providers.from_env(env, provider, need_keys=True,
                                     max_concurrency=limits.max_concurrency, rpm=limits.rpm,
                                     tpm=limits.tpm)
        if from_file:
            provider = dataclasses.replace(provider, ai_model=routing.default_model)
        return cls(
            common=Common.from_env(env),
            batching=batching,
            provider=provider,
            name=env.optional("PROCESSOR_NAME") or default_name("proc"),
            concurrency=env.integer("PROCESSOR_CONCURRENCY", 32, min_value=1, max_value=100_000),
            max_attempts=env.integer("MAX_ATTEMPTS", 3, min_value=1, max_value=100),
            retry_base_s=env.number("RETRY_BASE_S", 1.0, min_value=0),
            retry_cap_s=env.number("RETRY_CAP_S", 30.0, min_value=0),
            retry_after_cap_s=retry_after_cap_s,
            retention_s=env.integer("EVENTS_RETENTION_S", 3600, min_value=1),
            unstored_retention_s=env.integer("RESPONSES_UNSTORED_RETENTION_S", 60,
                                             min_value=1),
            drain_s=env.number("DRAIN_S", 20.0, min_value=0),
            heartbeat_s=env.number("HEARTBEAT_S", 1.0, min_value=0.05),
            reclaim_interval_s=env.number(
                "RECLAIM_INTERVAL_S", min(5.0, batching.lock_ttl_ms / 3000), min_value=0.05),
            governor=env.flag("GOVERNOR", True),
            limits=limits,
            task_deadline_s=env.number("TASK_DEADLINE_S", 86_400.0, min_value=1),
            metrics=MetricsSettings.from_env(env),
            routing=routing,
            breaker=BreakerSettings.from_env(env),
        )


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """A provider's breaker: ``failures`` in a row (across processors) open it (0: never),
    for ``cooldown_s``, doubled while its probes keep failing, up to ``max_cooldown_s``."""

    failures: int = 5
    cooldown_s: float = 5.0
    max_cooldown_s: float = 300.0

    @classmethod
    def from_env(cls, env: Env) -> BreakerSettings:
        cooldown = env.number("BREAKER_COOLDOWN_S", 5.0, min_value=0.01)
        return cls(failures=env.integer("BREAKER_FAILURES", 5, min_value=0, max_value=10_000),
                   cooldown_s=cooldown,
                   max_cooldown_s=env.number("BREAKER_MAX_COOLDOWN_S", max(300.0, cooldown),
                                             min_value=cooldown))

"""Processor settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import Batching, Common, Env, Provider
from shared.governor import Limits
from shared.healthcheck import default_name
from shared.metrics import MetricsSettings


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
    drain_s: float
    heartbeat_s: float
    reclaim_interval_s: float
    governor: bool
    limits: Limits
    task_deadline_s: float
    metrics: MetricsSettings

    @classmethod
    def from_env(cls, env: Env | None = None) -> ProcessorSettings:
        env = env or Env()
        batching = Batching.from_env(env)
        retry_after_cap_s = env.number("RETRY_AFTER_CAP_S", 60.0, min_value=0)
        return cls(
            common=Common.from_env(env),
            batching=batching,
            provider=Provider.from_env(env),
            name=env.optional("PROCESSOR_NAME") or default_name("proc"),
            concurrency=env.integer("PROCESSOR_CONCURRENCY", 32, min_value=1, max_value=100_000),
            max_attempts=env.integer("MAX_ATTEMPTS", 3, min_value=1, max_value=100),
            retry_base_s=env.number("RETRY_BASE_S", 1.0, min_value=0),
            retry_cap_s=env.number("RETRY_CAP_S", 30.0, min_value=0),
            retry_after_cap_s=retry_after_cap_s,
            retention_s=env.integer("EVENTS_RETENTION_S", 3600, min_value=1),
            drain_s=env.number("DRAIN_S", 20.0, min_value=0),
            heartbeat_s=env.number("HEARTBEAT_S", 1.0, min_value=0.05),
            reclaim_interval_s=env.number(
                "RECLAIM_INTERVAL_S", min(5.0, batching.lock_ttl_ms / 3000), min_value=0.05),
            governor=env.flag("GOVERNOR", True),
            limits=Limits(
                max_concurrency=env.integer("PROVIDER_MAX_CONCURRENCY", 0, min_value=0),
                rpm=env.integer("PROVIDER_RPM", 0, min_value=0),
                tpm=env.integer("PROVIDER_TPM", 0, min_value=0),
                initial_window=env.integer("GOVERNOR_INITIAL_WINDOW", 16, min_value=1,
                                           max_value=100_000),
                max_backoff_ms=int(1000 * env.number("GOVERNOR_MAX_BACKOFF_S", 30.0,
                                                     min_value=0.1)),
                reset_cap_ms=int(1000 * retry_after_cap_s)),
            task_deadline_s=env.number("TASK_DEADLINE_S", 86_400.0, min_value=1),
            metrics=MetricsSettings.from_env(env),
        )

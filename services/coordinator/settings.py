"""Coordinator settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from services.coordinator.fairness import Fairness
from shared.config import Batching, Common, Env
from shared.healthcheck import default_name
from shared.metrics import MetricsSettings


@dataclass(frozen=True, slots=True)
class CoordinatorSettings:
    common: Common
    batching: Batching
    fairness: Fairness
    name: str
    heartbeat_s: float
    reclaim_idle_ms: int
    metrics: MetricsSettings

    @classmethod
    def from_env(cls, env: Env | None = None) -> CoordinatorSettings:
        env = env or Env()
        return cls(
            common=Common.from_env(env),
            batching=Batching.from_env(env),
            fairness=Fairness.from_env(env),
            name=env.optional("COORDINATOR_NAME") or default_name("coord"),
            heartbeat_s=env.number("HEARTBEAT_S", 1.0, min_value=0.05),
            reclaim_idle_ms=env.integer("COORDINATOR_RECLAIM_IDLE_MS", 5000, min_value=100),
            metrics=MetricsSettings.from_env(env),
        )

"""Fair shares among tenants and the weight of a priority step, read once from the environment.

``TENANT_WEIGHTS`` (``acme:3,globex:1``; a tenant not named weighs 1) and
``PRIORITY_AGING_S`` (how many seconds of waiting one priority step is worth: a task of
priority -10 goes before priority-0 tasks submitted up to 10 steps earlier, and one of
priority 10 after those submitted up to 10 steps later, so it still runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.config import ConfigError, Env

MAX_WEIGHT = 1000.0


@dataclass(frozen=True, slots=True)
class Fairness:
    weights: dict[str, float] = field(default_factory=dict)
    aging_ms: int = 60_000

    @classmethod
    def from_env(cls, env: Env) -> Fairness:
        return cls(weights=parse_weights(env.text("TENANT_WEIGHTS", "")),
                   aging_ms=round(env.number("PRIORITY_AGING_S", 60.0, min_value=0.001,
                                             max_value=86_400.0) * 1000))


def parse_weights(raw: str) -> dict[str, float]:
    """``tenant:weight`` pairs, comma separated; a bad pair fails with what it should be."""
    weights: dict[str, float] = {}
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        tenant, sep, value = part.rpartition(":")
        try:
            weight = float(value)
        except ValueError:
            weight = 0.0
        if not sep or not tenant or not 0 < weight <= MAX_WEIGHT:
            raise ConfigError(f"TENANT_WEIGHTS: {part!r} should be tenant:weight with a weight "
                              f"above 0 and at most {MAX_WEIGHT:g} (e.g. acme:3,globex:1)")
        weights[tenant] = weight
    return weights

"""Settings for the mock provider, read once from the environment.

Everything has a default so the mock runs with no configuration at all: it is the
system's default provider, and tests/benchmarks start it bare.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(ValueError):
    """A bad environment value; the message names the variable so it fits on one line."""


def _raw(env: Mapping[str, str], name: str) -> str | None:
    # An empty value counts as unset: compose files and shells often export `VAR=`.
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: expected an integer in {lo}..{hi}, got {raw!r}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}: expected a non-negative number, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _raw(env, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name}: expected a boolean (true/false/1/0/yes/no/on/off), got {raw!r}")


# Upper bound on generated tokens; stops a typo from allocating gigabytes per request.
MAX_TOKENS_PER_PART = 100_000


@dataclass(frozen=True, slots=True)
class MockSettings:
    host: str = "127.0.0.1"
    port: int = 8090
    ttft_ms: float = 20.0
    # 0 disables inter-token pacing entirely (benchmarks rely on this).
    tokens_per_s: float = 200.0
    content_tokens: int = 24
    reasoning_tokens: int = 12
    # Simulates a provider that cannot stream: stream:true still gets a JSON body.
    no_stream: bool = False
    model: str = "mock-r1"
    # None = no auth; the mock is the default provider and must work without a key.
    api_key: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MockSettings:
        """Build settings from `env` (default: os.environ); raises ConfigError on bad values."""
        env = os.environ if env is None else env
        d = cls()
        return cls(
            host=_raw(env, "MOCKAI_HOST") or d.host,
            port=_int(env, "MOCKAI_PORT", d.port, 0, 65535),
            ttft_ms=_float(env, "MOCKAI_TTFT_MS", d.ttft_ms),
            tokens_per_s=_float(env, "MOCKAI_TOKENS_PER_S", d.tokens_per_s),
            content_tokens=_int(
                env, "MOCKAI_CONTENT_TOKENS", d.content_tokens, 0, MAX_TOKENS_PER_PART
            ),
            reasoning_tokens=_int(
                env, "MOCKAI_REASONING_TOKENS", d.reasoning_tokens, 0, MAX_TOKENS_PER_PART
            ),
            no_stream=_bool(env, "MOCKAI_NO_STREAM", d.no_stream),
            model=_raw(env, "MOCKAI_MODEL") or d.model,
            # Not stripped/defaulted like the others: a key is compared byte for byte.
            api_key=env.get("MOCKAI_API_KEY") or None,
        )

"""Settings for the mock provider, read once from the environment.

Everything has a default so the mock runs with no configuration at all: it is the
system's default provider, and tests/benchmarks start it bare.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from shared.config import MOCK_MODEL, MOCK_PORT, ConfigError, Env, Secret

from .limits import LimitSettings

__all__ = ["MAX_TOKENS_PER_PART", "ConfigError", "MockSettings"]


# Upper bound on generated tokens; stops a typo from allocating gigabytes per request.
MAX_TOKENS_PER_PART = 100_000


@dataclass(frozen=True, slots=True)
class MockSettings:
    host: str = "127.0.0.1"
    port: int = MOCK_PORT
    ttft_ms: float = 20.0
    # 0 disables inter-token pacing entirely (benchmarks rely on this).
    tokens_per_s: float = 200.0
    content_tokens: int = 24
    reasoning_tokens: int = 12
    # Simulates a provider that cannot stream: stream:true still gets a JSON body.
    no_stream: bool = False
    model: str = MOCK_MODEL
    # None = no auth; the mock is the default provider and must work without a key.
    api_key: Secret[str] | None = None
    # MOCKAI_RECORD_BODIES: keep every request's body in its record (GET /mock/requests).
    record_bodies: bool = False
    # MOCKAI_TOOL_ARGUMENTS: the arguments (JSON text) of every tool call the mock makes when the
    # request sets no metadata.mock.tool_arguments (a client such as the Codex CLI sends none):
    # None makes them up ({"query": <word>, "call": <k>}).
    tool_arguments: str | None = None
    # MOCKAI_REJECT_PARAMS: top-level fields answered with a 400 naming the field, as a provider
    # answers a parameter it does not support.
    reject_params: tuple[str, ...] = ()
    # MOCKAI_REPLAY_DIR: the folder metadata.mock.replay names files of (none: replay is off).
    replay_dir: str | None = None
    # Provider limit modes (off by default): see limits.py.
    limits: LimitSettings = field(default_factory=LimitSettings)
    # Every chat call answered with this status (0: none), until POST /mock/outage heals it.
    fail_status: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | Env | None = None) -> MockSettings:
        """Build settings from `env` (default: os.environ); raises ConfigError on bad values."""
        e = env if isinstance(env, Env) else Env(os.environ if env is None else env)
        d = cls()
        tokens = {"min_value": 0, "max_value": MAX_TOKENS_PER_PART}
        return cls(
            host=e.text("MOCKAI_HOST", d.host),
            port=e.integer("MOCKAI_PORT", d.port, min_value=0, max_value=65535),
            ttft_ms=e.number("MOCKAI_TTFT_MS", d.ttft_ms, min_value=0),
            tokens_per_s=e.number("MOCKAI_TOKENS_PER_S", d.tokens_per_s, min_value=0),
            content_tokens=e.integer("MOCKAI_CONTENT_TOKENS", d.content_tokens, **tokens),
            reasoning_tokens=e.integer("MOCKAI_REASONING_TOKENS", d.reasoning_tokens, **tokens),
            no_stream=e.flag("MOCKAI_NO_STREAM", d.no_stream),
            model=e.text("MOCKAI_MODEL", d.model),
            # Not stripped like the others: a key is compared byte for byte.
            api_key=_key(e.exact("MOCKAI_API_KEY", secret=True)),
            record_bodies=e.flag("MOCKAI_RECORD_BODIES", d.record_bodies),
            tool_arguments=_json_object("MOCKAI_TOOL_ARGUMENTS",
                                        e.optional("MOCKAI_TOOL_ARGUMENTS")),
            reject_params=tuple(p.strip() for p in e.text("MOCKAI_REJECT_PARAMS", "").split(",")
                                if p.strip()),
            replay_dir=e.optional("MOCKAI_REPLAY_DIR"),
            limits=_limits(e),
            fail_status=e.integer("MOCKAI_FAIL_STATUS", d.fail_status, min_value=0,
                                  max_value=599),
        )


def _json_object(name: str, value: str | None) -> str | None:
    """``value`` when it is a JSON object's text (a function's arguments), else ConfigError."""
    if value is None:
        return None
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{name}: must be a JSON object, got {value!r}")
    return value


def _key(value: str | None) -> Secret[str] | None:
    return None if value is None else Secret(value)


def _limits(e: Env) -> LimitSettings:
    d = LimitSettings()
    return LimitSettings(
        max_concurrency=e.integer("MOCKAI_MAX_CONCURRENCY", d.max_concurrency, min_value=0),
        rpm=e.integer("MOCKAI_RPM", d.rpm, min_value=0),
        tpm=e.integer("MOCKAI_TPM", d.tpm, min_value=0),
        window_s=e.number("MOCKAI_RATE_WINDOW_S", d.window_s, min_value=0.01),
        retry_after=e.flag("MOCKAI_RETRY_AFTER", d.retry_after),
        headers=e.flag("MOCKAI_RATELIMIT_HEADERS", d.headers),
        status=int(e.choice("MOCKAI_LIMIT_STATUS", str(d.status), ("429", "503", "529"))),
    )

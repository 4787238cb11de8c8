"""Reading settings from the environment: once, strictly, with errors that name the variable.

Each service builds one frozen settings object from these helpers at start-up; nothing else
reads ``os.environ``. A bad value raises :class:`ConfigError`, which ``__main__`` turns into a
one-line message and exit status 2 (Starlette's ``Config`` does the same).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
MOCK_PORT = 8090  # MOCKAI_PORT's default: where the mock listens, and so where it is called
# The mock provider names itself with this header on every answer (services/mockai), so the
# edge can tell it apart from a real provider wherever it runs (``mockai:8090`` in compose).
MOCK_HEADER = "X-Sluice-Mock"

# A variable whose name says it holds a key is never shown by ``--help``, even if its read
# forgot to say ``secret=True``.
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


T = TypeVar("T")


class Secret(Generic[T]):
    """A setting that must never be printed: an API key, a key table, a URL with a password.

    ``repr`` and ``str`` show ``***`` (a URL shows itself without its password, so the log
    still says where it points); ``get()`` is the only way to the value, so every place that
    uses one is plain to see. A settings object holding them can be logged, shown in a
    traceback or repr'd in a debugger.
    """

    __slots__ = ("_shown", "_value")

    def __init__(self, value: T, shown: str = "***") -> None:
        self._value, self._shown = value, shown

    @staticmethod
    def url(url: str) -> Secret[str]:
        return Secret(url, mask_url(url))

    def get(self) -> T:
        return self._value

    def __repr__(self) -> str:
        return self._shown

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    __hash__ = None  # type: ignore[assignment]  # equal by value, which may be a dict


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Read:
    """One variable a settings object read: its name, its default as text ('' when it has
    none), and whether its value is a secret (``--help`` shows it as ``***``)."""

    name: str
    default: str
    secret: bool


class Env:
    """Typed access to one snapshot of the environment.

    Every variable asked for is noted in ``reads``, in order, with its default: a service's
    ``--help`` lists exactly what its settings read (shared/runtime.py: help_if_asked)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env = dict(os.environ if environ is None else environ)
        self.reads: dict[str, Read] = {}

    def note(self, name: str, default: object, secret: bool = False) -> None:
        if name not in self.reads:
            shown = "" if default is None else str(default).lower() if isinstance(
                default, bool) else str(default)
            self.reads[name] = Read(name, shown, secret or any(
                w in name for w in _SECRET_WORDS))

    def raw(self, name: str) -> str | None:
        value = self._env.get(name)
        return None if value is None or value.strip() == "" else value.strip()

    def text(self, name: str, default: str) -> str:
        self.note(name, default)
        value = self.raw(name)
        return default if value is None else value

    def optional(self, name: str, *, secret: bool = False) -> str | None:
        self.note(name, None, secret)
        return self.raw(name)

    def exact(self, name: str, *, secret: bool = False) -> str | None:
        """The value as set, not stripped (a key compared byte for byte); None when empty."""
        self.note(name, None, secret)
        return self._env.get(name) or None

    def integer(self, name: str, default: int, *, min_value: int | None = None,
                max_value: int | None = None) -> int:
        self.note(name, default)
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
        self._check_range(name, value, number, min_value, max_value)
        return number

    def number(self, name: str, default: float, *, min_value: float | None = None,
               max_value: float | None = None) -> float:
        self.note(name, default)
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        self._check_range(name, value, number, min_value, max_value)
        return number

    def flag(self, name: str, default: bool) -> bool:
        self.note(name, default)
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default).lower()
        if value not in choices:
            raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
        return value

    def url(self, name: str, default: str, schemes: tuple[str, ...]) -> str:
        value = self.text(name, default)
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in schemes:
            raise ConfigError(f"{name}: expected a URL starting with "
                              f"{' or '.join(s + '://' for s in schemes)}, got {mask_url(value)!r}")
        return value

    @staticmethod
    def _check_range(name: str, raw: str, number: float, lo: float | None,
                     hi: float | None) -> None:
        if lo is not None and number < lo:
            raise ConfigError(f"{name}: must be at least {lo}, got {raw!r}")
        if hi is not None and number > hi:
            raise ConfigError(f"{name}: must be at most {hi}, got {raw!r}")


def mask_url(url: str) -> str:
    """Hide the password of a URL such as ``redis://user:secret@host``."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else f"{scheme}://***@{host}"


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every occurrence of each non-empty secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def describe(settings: Any) -> dict[str, Any]:
    """Settings as a dict that is safe to log: each secret as its masked form."""
    out: dict[str, Any] = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, Secret):
            value = str(value)
        elif isinstance(value, RedisOverrides):
            value = sorted(value.on)  # the names, as JSON has no sets
        out[f.name] = value
    return out


@dataclass(frozen=True, slots=True)
class Common:
    """Settings every service shares."""

    redis_url: Secret[str]  # may carry a password
    store_url: Secret[str]  # a SQLite path (or sqlite:///path), or postgresql://... (may
    #                         carry a password)
    log_format: str
    log_level: str
    redis_prefix: str
    redis_overrides: RedisOverrides  # REDIS_OVERRIDES: which overrides of redis-py are on
    redis_cluster: bool = False
    store_pool_size: int = 10  # PostgreSQL connections per process (SQLite ignores it)

    @classmethod
    def from_env(cls, env: Env) -> Common:
        url = _redis_url(env)
        log_format, log_level = logging_from_env(env)
        return cls(
            redis_url=Secret.url(url),
            store_url=Secret.url(_store_url(env)),
            log_format=log_format,
            log_level=log_level,
            redis_prefix=env.text("REDIS_PREFIX", "sluice"),
            redis_overrides=RedisOverrides.from_env(env),
            redis_cluster=url.split("://", 1)[0].endswith("+cluster"),
            store_pool_size=env.integer("STORE_POOL_SIZE", 10, min_value=1, max_value=1000),
        )


def logging_from_env(env: Env) -> tuple[str, str]:
    """LOG_FORMAT and LOG_LEVEL (the mock reads only these of the common settings)."""
    return (env.choice("LOG_FORMAT", "json", ("json", "console")),
            env.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")))


STORE_SCHEMES = ("sqlite", "postgresql", "postgres")
DEFAULT_STORE = "./data/sluice.db"


def _store_url(env: Env) -> str:
    """STORE_URL, or STORE_PATH (the older name, a SQLite path) when only that is set."""
    env.note("STORE_URL", DEFAULT_STORE)
    url, path = env.optional("STORE_URL"), env.optional("STORE_PATH")
    if url is not None and path is not None and url != path:
        raise ConfigError("STORE_URL and STORE_PATH are both set and differ: set only "
                          "STORE_URL (STORE_PATH is its older name)")
    value = url or path or DEFAULT_STORE
    name = "STORE_URL" if url is not None else "STORE_PATH"
    if "://" in value:
        scheme, rest = value.split("://", 1)
        if scheme.lower() not in STORE_SCHEMES:
            raise ConfigError(f"{name}: expected a file path, sqlite:///path or "
                              f"postgresql://..., got {mask_url(value)!r}")
        if scheme.lower() == "sqlite" and not rest.lstrip("/"):
            raise ConfigError(f"{name}: sqlite:/// needs a file path, got {value!r}")
        if scheme.lower().startswith("postgres") and not rest:
            raise ConfigError(f"{name}: postgresql:// needs a host or a database, got "
                              f"{mask_url(value)!r}")
    return value


def _redis_url(env: Env) -> str:
    """REDIS_URL, with REDIS_CLUSTER=true folded into its scheme (``redis+cluster://``), so
    that the URL alone tells every client which kind of Redis it talks to."""
    url = env.url("REDIS_URL", DEFAULT_REDIS_URL,
                  ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"))
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    in_url = scheme.endswith("+cluster")
    wanted = env.flag("REDIS_CLUSTER", in_url)
    if in_url and not wanted:
        raise ConfigError(f"REDIS_CLUSTER: false, but REDIS_URL asks for a cluster "
                          f"({scheme}://)")
    if wanted and scheme == "unix":
        raise ConfigError("REDIS_CLUSTER: a Redis Cluster is reached over TCP (redis:// or "
                          "rediss://), not a unix socket")
    return f"{scheme}+cluster://{rest}" if wanted and not in_url else f"{scheme}://{rest}"


@dataclass(frozen=True, slots=True)
class Batching:
    """How tasks are grouped and how long a processor's lease lasts."""

    batch_size: int
    batch_timeout_ms: int
    batch_adaptive: bool
    lock_ttl_ms: int

    @classmethod
    def from_env(cls, env: Env) -> Batching:
        return cls(
            batch_size=env.integer("BATCH_SIZE", 3, min_value=1, max_value=1000),
            batch_timeout_ms=env.integer("BATCH_TIMEOUT_MS", 30_000, min_value=1),
            batch_adaptive=env.flag("BATCH_ADAPTIVE", True),
            lock_ttl_ms=env.integer("LOCK_TTL_MS", 30_000, min_value=300),
        )


@dataclass(frozen=True, slots=True)
class Provider:
    """The OpenAI-compatible model provider; the mock one when AI_BASE_URL is unset.

    ``forward_metadata``: each task's ``metadata`` goes to the provider (the mock reads its
    per-task options from it; real providers may refuse it). It says nothing about which
    provider this is: ``/api/ai-status`` asks the provider (services/edge/ops/provider_probe.py).
    """

    ai_base_url: Secret[str]  # may carry credentials
    ai_api_key: Secret[str] | None
    ai_model: str
    ai_timeout_s: float
    ai_idle_timeout_s: float
    ai_max_line_bytes: int
    forward_metadata: bool
    # AI_DROP_PARAMS: members removed from every call, for a provider that refuses them.
    drop_params: frozenset[str] = frozenset()
    # AI_EXTRA_BODY: members every call gets unless the request sets them itself (a secret: an
    # extra may carry a credential).
    extra_body: Secret[dict[str, Any]] | None = None

    @classmethod
    def from_env(cls, env: Env, *, model_required: bool = True) -> Provider:
        """``model_required``: False where PROVIDERS_FILE names the models instead."""
        env.note("AI_BASE_URL", "the mock: http://127.0.0.1:<MOCKAI_PORT>/v1")
        env.note("AI_MODEL", f"{MOCK_MODEL}; required with AI_BASE_URL")
        base = env.optional("AI_BASE_URL")
        key = env.optional("AI_API_KEY", secret=True)
        model = env.optional("AI_MODEL")
        if base is not None and model is None and model_required:
            # No default fits every provider: a guessed one fails every task at a provider
            # that does not serve it, which is found only once the first task has failed.
            raise ConfigError("AI_MODEL: required when AI_BASE_URL is set (the model your "
                              "provider serves, e.g. deepseek-chat); unset AI_BASE_URL to use "
                              "the mock provider")
        return cls(
            ai_base_url=Secret.url((base or mock_base_url(env)).rstrip("/")),
            ai_api_key=None if key is None else Secret(key),
            ai_model=model or MOCK_MODEL,
            ai_timeout_s=env.number("AI_TIMEOUT_S", 300.0, min_value=0.1),
            ai_idle_timeout_s=env.number("AI_IDLE_TIMEOUT_S", 120.0, min_value=0.1),
            # 1 MiB: see services.processor.sse.MAX_LINE_BYTES.
            ai_max_line_bytes=env.integer("AI_MAX_LINE_BYTES", 1 << 20, min_value=1024),
            forward_metadata=env.flag("AI_FORWARD_METADATA", base is None),
            drop_params=frozenset(p.strip() for p in env.text("AI_DROP_PARAMS", "").split(",")
                                  if p.strip()),
            extra_body=_extra_body(env.optional("AI_EXTRA_BODY")),
        )


MOCK_MODEL = "mock-r1"  # the mock provider's model, AI_MODEL's default when AI_BASE_URL is unset


def mock_base_url(env: Env) -> str:
    """Where the mock provider is called when AI_BASE_URL is unset: on this host, at the port
    it listens on (MOCKAI_PORT, the same variable the mock reads)."""
    port = env.integer("MOCKAI_PORT", MOCK_PORT, min_value=1, max_value=65535)
    return f"http://127.0.0.1:{port}/v1"


# Where Sluice overrides redis-py for speed (shared/redis_conn.py), each with its switch:
# REDIS_OVERRIDES=-lane,-pack turns those two off; "none" all of them; unset, all are on.
REDIS_OVERRIDES = ("pool", "pack", "lane")


@dataclass(frozen=True, slots=True)
class RedisOverrides:
    """The overrides of redis-py in use (see ``shared/redis_conn.py``); the others take
    redis-py's own path."""

    on: frozenset[str] = frozenset(REDIS_OVERRIDES)

    def __contains__(self, name: object) -> bool:
        return name in self.on

    @classmethod
    def without(cls, *names: str) -> RedisOverrides:
        unknown = sorted(set(names) - set(REDIS_OVERRIDES))
        if unknown:
            raise ValueError(f"no such override: {', '.join(unknown)}")
        return cls(frozenset(REDIS_OVERRIDES) - set(names))

    @classmethod
    def from_env(cls, env: Env) -> RedisOverrides:
        raw = env.raw("REDIS_OVERRIDES")
        if raw is None:
            return cls()
        on = set(REDIS_OVERRIDES)
        for item in (i.strip().lower() for i in raw.split(",")):
            name = item.lstrip("+-")
            if item == "":
                continue
            if item in ("all", "none"):
                on = set(REDIS_OVERRIDES) if item == "all" else set()
            elif name in REDIS_OVERRIDES:
                (on.discard if item.startswith("-") else on.add)(name)
            else:
                raise ConfigError(f"REDIS_OVERRIDES: expected a comma-separated list of "
                                  f"{', '.join(REDIS_OVERRIDES)} (each may start with - to "
                                  f"turn it off), all or none; got {raw!r}")
        return cls(frozenset(on))


# What AI_EXTRA_BODY may not set: what Sluice decides for every call.
RESERVED_BODY = frozenset({"model", "messages", "stream", "stream_options"})


def _extra_body(raw: str | None) -> Secret[dict[str, Any]] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:  # the value is not quoted: it may hold a credential
        raise ConfigError("AI_EXTRA_BODY: must be a JSON object (it is not JSON)") from None
    if not isinstance(value, dict):
        raise ConfigError("AI_EXTRA_BODY: must be a JSON object")
    reserved = sorted(RESERVED_BODY.intersection(value))
    if reserved:
        raise ConfigError(f"AI_EXTRA_BODY: {reserved[0]!r} is Sluice's to set")
    return Secret(value) if value else None

"""The provider governor's atomic steps (shared/lua/admit.lua, settle.lua, gov_peek.lua,
expire.lua), one typed method each in the shape of :mod:`shared.steps`, and the pure pieces
around them: the provider's identity, token estimates, what a provider's rate-limit headers say.

Each method states its script's KEYS and ARGV once, in its docstring, and turns the reply into
a frozen dataclass (or a small union of them); callers never index a raw reply. The scripts get
the same generated prelude as the others (status and event names from :mod:`shared.tasks`).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson
from redis.commands.core import AsyncScript

from shared import jsonbytes, scripts
from shared.coalesce import Coalescer
from shared.keys import Keys
from shared.redis_conn import RedisClient

NAMES = ("admit", "settle", "gov_peek", "expire", "breaker")  # the scripts this module calls
RATE_WINDOW_MS = 60_000  # PROVIDER_RPM and PROVIDER_TPM count per minute, as providers do
LIMITED_WINDOW_MS = 60_000  # "429s in the last minute" on /api/ai-status
DEFAULT_COMPLETION_TOKENS = 1024  # a completion with no max_tokens, for the TPM estimate


# --- identity and estimates -----------------------------------------------------------------
def provider_id(base_url: str, api_key: str | None, model: str) -> str:
    """Providers count per account (key) and model: one governor per (URL, key, model). The
    key enters only through a hash, never stored or logged."""
    raw = "\n".join((base_url.rstrip("/"), key_fingerprint(api_key), model))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def key_fingerprint(api_key: str | None) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()[:8] if api_key else "nokey"


def estimate_tokens(request: dict[str, Any]) -> int:
    """Prompt tokens (about 4 characters each) plus the completion's upper bound."""
    chars = 0
    for message in request.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(str(part.get("text") or "")) for part in content
                         if isinstance(part, dict))
    completion = request.get("max_completion_tokens") or request.get("max_tokens")
    if not isinstance(completion, int) or completion <= 0:
        completion = DEFAULT_COMPLETION_TOKENS
    return math.ceil(chars / 4) + completion


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str | None) -> float | None:
    """A Go-style duration (OpenAI's x-ratelimit-reset-*: ``6m0s``, ``1s``, ``20ms``,
    ``1h2m3.5s``) or plain seconds, in seconds; None when it is neither."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return value if math.isfinite(value) and value >= 0 else None
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos > 0 else None


def format_duration(ms: int) -> str:
    """Milliseconds as OpenAI writes x-ratelimit-reset-*: ``20ms``, ``1.5s``, ``1m0s``."""
    if ms < 1000:
        return f"{max(0, ms)}ms"
    minutes, rest = divmod(ms, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{seconds}" if minutes else seconds


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """What one answer's x-ratelimit-* headers said, with resets as epoch ms."""

    remaining_requests: int | None = None
    reset_requests_at: int | None = None
    limit_requests: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_at: int | None = None
    limit_tokens: int | None = None

    @classmethod
    def parse(cls, headers: Any, now: int) -> RateHeaders | None:
        """From a case-insensitive header mapping; None when there is nothing to learn."""
        def num(name: str) -> int | None:
            raw = headers.get(name)
            try:
                return int(float(raw)) if raw is not None else None
            except ValueError:
                return None

        def at(name: str) -> int | None:
            seconds = parse_duration(headers.get(name))
            return None if seconds is None else now + math.ceil(seconds * 1000)

        found = cls(num("x-ratelimit-remaining-requests"), at("x-ratelimit-reset-requests"),
                    num("x-ratelimit-limit-requests"), num("x-ratelimit-remaining-tokens"),
                    at("x-ratelimit-reset-tokens"), num("x-ratelimit-limit-tokens"))
        return None if found == cls() else found

    def entry(self) -> dict[str, int]:
        pairs = (("rr", self.remaining_requests), ("rs", self.reset_requests_at),
                 ("rl", self.limit_requests), ("tr", self.remaining_tokens),
                 ("ts", self.reset_tokens_at), ("tl", self.limit_tokens))
        return {k: v for k, v in pairs if v is not None}


# --- step results ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Admitted:
    limit: int
    in_flight: int  # this call included


@dataclass(frozen=True, slots=True)
class Wait:
    reason: str  # paused | requests | tokens | capacity | rpm | tpm
    until: int  # epoch ms; 0 = until a slot frees
    limit: int
    in_flight: int


@dataclass(frozen=True, slots=True)
class Room:
    """A provider's room as admit/settle/peek last saw it."""

    limit: int
    in_flight: int
    blocked_until: int  # epoch ms; 0 = not paused or spent

    def free(self, now: int) -> int:
        return 0 if self.blocked_until > now else max(0, self.limit - self.in_flight)


@dataclass(frozen=True, slots=True)
class Limits:
    """The operator's limits (0: none) and the learned window's start."""

    max_concurrency: int = 0
    rpm: int = 0
    tpm: int = 0
    initial_window: int = 8
    max_backoff_ms: int = 30_000
    # RETRY_AFTER_CAP_S: no pause or x-ratelimit reset a provider announces holds longer.
    reset_cap_ms: int = 60_000


@dataclass(frozen=True, slots=True)
class Breaker:
    """A provider's breaker as breaker.lua left it; ``granted``: the call asked for may go."""

    state: str  # closed | open | half_open
    failures: int
    open_until: int  # epoch ms
    granted: bool = False

    def allows(self, now: int) -> str:
        """'yes' (closed), 'probe' (its cool-down is over: one call may try, once taken) or
        'no'."""
        if self.state == "closed":
            return "yes"
        return "probe" if now >= self.open_until else "no"


CLOSED = Breaker("closed", 0, 0)


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures: int  # in a row, to open (0: never)
    cooldown_ms: int
    max_cooldown_ms: int
    probe_ms: int  # a probe taken but never answered is given up after this


class GovernorSteps:
    def __init__(self, redis: RedisClient, keys: Keys, limits: Limits) -> None:
        self.redis, self.keys, self.limits = redis, keys, limits
        # Every provider call of every task is admitted: those in flight at once go together.
        self._admit = Coalescer(redis, self._load("admit"))
        self._settle = self._load("settle")
        self._peek = self._load("gov_peek")
        self._expire = self._load("expire")
        self._breaker = self._load("breaker")

    def _load(self, name: str) -> AsyncScript:
        return self.redis.register_script(scripts.source(name))  # with the names' prelude

    def _counts(self, provider: str, what: str, now: int) -> tuple[str, str]:
        idx = now // RATE_WINDOW_MS
        return (self.keys.governor_count(provider, what, idx),
                self.keys.governor_count(provider, what, idx - 1))

    async def admit(self, provider: str, task_id: str, slot: str, now: int, lease_ms: int,
                    tokens: int, limits: Limits | None = None) -> Admitted | Wait:
        """admit.lua. KEYS: state, slots, requests (this, previous window), tokens (this,
        previous window), task hash. ARGV: now, slot, lease, tokens, max concurrency, rpm,
        tpm, window, initial window. Reply {'ok', limit, in flight} or {'wait', reason, until,
        limit, in flight}. ``limits``: this provider's, when not the deployment's."""
        k, lim = self.keys, limits or self.limits
        reply = await self._admit(
            [k.governor(provider), k.governor_slots(provider),
             *self._counts(provider, "requests", now), *self._counts(provider, "tokens", now),
             k.task(task_id)],
            [now, slot, lease_ms, tokens, lim.max_concurrency, lim.rpm, lim.tpm,
             RATE_WINDOW_MS, lim.initial_window])
        if reply[0] == "ok":
            return Admitted(int(reply[1]), int(reply[2]))
        return Wait(str(reply[1]), int(reply[2]), int(reply[3]), int(reply[4]))

    async def settle(self, provider: str, now: int, entries: list[dict[str, Any]],
                     limits: Limits | None = None) -> Room:
        """settle.lua. KEYS: state, slots, tokens (this window), limited answers (this
        minute). ARGV: now, max concurrency, initial window, max backoff, '1' when a TPM limit
        is set, the cap on what a provider says to wait for, entries (JSON).
        Reply {limit, in flight, pause until}."""
        k, lim = self.keys, limits or self.limits
        reply = await self._settle(
            keys=[k.governor(provider), k.governor_slots(provider),
                  k.governor_count(provider, "tokens", now // RATE_WINDOW_MS),
                  k.governor_count(provider, "limited", now // LIMITED_WINDOW_MS)],
            args=[now, lim.max_concurrency, lim.initial_window, lim.max_backoff_ms,
                  "1" if lim.tpm else "0", lim.reset_cap_ms,
                  *(jsonbytes.dumps(e) for e in entries)])
        return Room(int(reply[0]), int(reply[1]), int(reply[2]))

    async def peek(self, provider: str, now: int, limits: Limits | None = None) -> Room:
        """gov_peek.lua. KEYS: state, slots. ARGV: now, max concurrency, initial window.
        Reply {limit, in flight, blocked until}."""
        k, lim = self.keys, limits or self.limits
        reply = await self._peek(keys=[k.governor(provider), k.governor_slots(provider)],
                                 args=[now, lim.max_concurrency, lim.initial_window])
        return Room(int(reply[0]), int(reply[1]), int(reply[2]))

    async def breaker(self, provider: str, op: str, now: int, policy: BreakerPolicy,
                      error: str = "") -> Breaker:
        """breaker.lua. KEYS: the provider's breaker. ARGV: op (probe, unprobe, ok, fail),
        now, failures to open, first cool-down, longest cool-down, probe lease, error.
        Reply {state, failures, open until, granted}."""
        reply = await self._breaker(
            keys=[self.keys.breaker(provider)],
            args=[op, now, policy.failures, policy.cooldown_ms, policy.max_cooldown_ms,
                  policy.probe_ms, error])
        state = str(reply[0])
        # half_open is open to everyone but the probe's caller: its open_until is the probe's
        return Breaker(state, int(reply[1]), int(reply[2]), reply[3] == 1)

    async def expire(self, task_id: str, now: int, retention_s: int, error: dict[str, Any],
                     view: dict[str, Any]) -> str:
        """expire.lua. KEYS: task hash, events, deadline index, dead letters, stats. ARGV: id,
        now, retention, error JSON, terminal event data, active-set prefix.
        Reply 'expired' | 'running' | 'gone'."""
        k = self.keys
        return str(await self._expire(
            keys=[k.task(task_id), k.events(task_id), k.deadlines, k.dead_letters, k.stats],
            args=[task_id, now, retention_s, jsonbytes.dumps(error), jsonbytes.dumps(view),
                  k.tenant_active("")]))


# --- what /api/ai-status and GET /api/tasks/{id} show (plain reads, no script) -------------
def _num(value: str | None) -> float | None:
    return None if value is None or value == "" else float(value)


async def read_providers(redis: RedisClient, keys: Keys, now: int) -> list[dict[str, Any]]:
    """Every governed provider: its label, window, calls in flight, what its headers said,
    any pause, and its 429s over the last minute (a sliding estimate over two fixed minutes)."""
    index: dict[str, str] = await redis.hgetall(keys.governors)  # type: ignore[assignment]
    out: list[dict[str, Any]] = []
    idx = now // LIMITED_WINDOW_MS
    frac = (now - idx * LIMITED_WINDOW_MS) / LIMITED_WINDOW_MS
    for provider, label in sorted(index.items()):
        async with redis.pipeline(transaction=False) as p:
            p.hgetall(keys.governor(provider))
            p.zcount(keys.governor_slots(provider), now, "+inf")
            p.get(keys.governor_count(provider, "limited", idx))
            p.get(keys.governor_count(provider, "limited", idx - 1))
            state, in_flight, cur, prev = await p.execute()
        out.append({"id": provider, **orjson.loads(label),
                    **provider_state(state, in_flight, now),
                    "rate_limited_last_minute": round(int(prev or 0) * (1 - frac)
                                                      + int(cur or 0))})
    return out


def provider_state(state: dict[str, str], in_flight: int, now: int) -> dict[str, Any]:
    window = _num(state.get("window"))
    pause = int(_num(state.get("pause_until")) or 0)

    def learned(kind: str) -> dict[str, Any] | None:
        limit, rem, reset = (_num(state.get(f"{kind}_{f}")) for f in ("limit", "rem", "reset"))
        if limit is None and rem is None:
            return None
        reset = abs(reset or 0)  # negative: a reset settle.lua capped
        return {"limit": None if limit is None else int(limit),
                "remaining": None if rem is None else int(rem),
                "reset_at": int(reset) if reset > now else None}

    refused_at = _num(state.get("refused_at"))
    return {
        "window": None if window is None else round(window, 2),
        "limit": int(_num(state.get("limit")) or max(1, int(window or 1))),
        "in_flight": in_flight,
        "slow_start": state.get("slow_start", "1") == "1",
        "last_refused_window": round(refused_at, 2) if refused_at else None,
        "paused_until": pause if pause > now else None,
        "learned": {"requests": learned("req"), "tokens": learned("tok")},
        "rate_limited_total": int(_num(state.get("limited_total")) or 0),
        "last_rate_limited_at": int(_num(state.get("limited_at")) or 0) or None,
    }

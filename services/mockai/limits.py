"""Provider limit modes: the mock refuses calls the way real providers do when a caller goes
past its limits (as the providers' own rate-limit documentation describes them).

- past N calls in flight (a vLLM's batch capacity behind a proxy);
- past N requests or N tokens in a fixed window (OpenAI's and SiliconFlow's RPM/TPM, with a
  window shorter than a minute so tests stay short);
- with or without ``Retry-After``, and optionally with OpenAI's ``x-ratelimit-*`` headers on
  every answer, so a client can pace itself before it is refused.

Pure bookkeeping with an injectable clock; the app calls :meth:`Limiter.admit` when a request
arrives and :meth:`Limiter.release` when its answer ends.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LimitSettings:
    max_concurrency: int = 0  # 0: no limit
    rpm: int = 0  # requests per window, 0: no limit
    tpm: int = 0  # tokens (prompt + planned completion) per window, 0: no limit
    window_s: float = 60.0
    retry_after: bool = True  # send Retry-After on a limit 429
    headers: bool = False  # send x-ratelimit-* on every answer
    status: int = 429  # what a refusal answers (429, or 503/529 for an "overloaded" provider)

    @property
    def active(self) -> bool:
        return bool(self.max_concurrency or self.rpm or self.tpm or self.headers)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to answer: ``limit`` is None when admitted, else 'concurrency'|'requests'|'tokens'."""

    limit: str | None
    headers: dict[str, str]


def format_duration(seconds: float) -> str:
    """A Go-style duration as OpenAI sends it in x-ratelimit-reset-*: ``20ms``, ``1s``,
    ``1.5s``, ``6m0s``, ``1h2m3s``."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    seconds = round(seconds, 3)  # whole milliseconds, so 59.9996 s is 1m0s, not 60s
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    s = f"{secs:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{int(hours)}h{int(minutes)}m{s}s"
    if minutes:
        return f"{int(minutes)}m{s}s"
    return f"{s}s"


class Limiter:
    __slots__ = ("_clock", "_requests", "_tokens", "_window_start", "in_flight", "settings")

    def __init__(self, settings: LimitSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self.in_flight = 0
        self._window_start = clock()
        self._requests = 0
        self._tokens = 0

    def _roll(self, now: float) -> float:
        """Seconds left in the current window, starting a new one when it has passed."""
        window = self.settings.window_s
        if now - self._window_start >= window:
            self._window_start += window * ((now - self._window_start) // window)
            self._requests = self._tokens = 0
        return self._window_start + window - now

    def admit(self, tokens: int) -> Verdict:
        s, now = self.settings, self._clock()
        left = self._roll(now)
        limit: str | None = None
        retry_s = left
        if s.max_concurrency and self.in_flight >= s.max_concurrency:
            limit, retry_s = "concurrency", 1.0
        elif s.rpm and self._requests >= s.rpm:
            limit = "requests"
        elif s.tpm and self._tokens + tokens > s.tpm:
            limit = "tokens"
        if limit is None:
            self.in_flight += 1
            self._requests += 1
            self._tokens += tokens
        headers = self._headers(left) if s.headers else {}
        if limit is not None and s.retry_after:
            headers["Retry-After"] = str(max(1, math.ceil(retry_s)))
        return Verdict(limit, headers)

    def release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def _headers(self, left: float) -> dict[str, str]:
        s, out = self.settings, {}
        reset = format_duration(left)
        if s.rpm:
            out["x-ratelimit-limit-requests"] = str(s.rpm)
            out["x-ratelimit-remaining-requests"] = str(max(0, s.rpm - self._requests))
            out["x-ratelimit-reset-requests"] = reset
        if s.tpm:
            out["x-ratelimit-limit-tokens"] = str(s.tpm)
            out["x-ratelimit-remaining-tokens"] = str(max(0, s.tpm - self._tokens))
            out["x-ratelimit-reset-tokens"] = reset
        return out

"""The governor's pure pieces: durations and rate-limit headers as providers send them, token
estimates, which refusals are a wait, provider identity, and request deadlines."""

from __future__ import annotations

import httpx
import pytest

from services.processor.assembler import ProviderError, parse_error_body
from services.processor.governor import is_rate_limit
from shared import deadlines
from shared.governor import (
    DEFAULT_COMPLETION_TOKENS,
    RateHeaders,
    estimate_tokens,
    parse_duration,
    provider_id,
)


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5),
    ("17", 17.0), ("150us", 0.00015), (" 2s ", 2.0)])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1x", "1s2", "-1", "1 s", "nan", "inf", "abc"])
def test_not_durations(text: str) -> None:
    assert parse_duration(text) is None


def test_rate_headers_as_openai_sends_them() -> None:
    h = httpx.Headers({"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
                       "x-ratelimit-reset-requests": "2s", "x-ratelimit-limit-tokens": "150000",
                       "x-ratelimit-remaining-tokens": "149984",
                       "x-ratelimit-reset-tokens": "6m0s"})
    found = RateHeaders.parse(h, 1000)
    assert found == RateHeaders(0, 3000, 60, 149984, 361_000, 150000)
    assert found.entry() == {"rr": 0, "rs": 3000, "rl": 60, "tr": 149984, "ts": 361_000,
                             "tl": 150000}
    assert RateHeaders.parse(httpx.Headers({"content-type": "text/event-stream"}), 0) is None
    odd = RateHeaders.parse(httpx.Headers({"X-RateLimit-Remaining-Requests": "junk",
                                           "x-ratelimit-reset-requests": "soon"}), 0)
    assert odd is None


def test_token_estimate_counts_the_prompt_and_the_completion_bound() -> None:
    msgs = [{"role": "user", "content": "x" * 400},
            {"role": "user", "content": [{"type": "text", "text": "y" * 40}]}]
    assert estimate_tokens({"messages": msgs, "max_tokens": 50}) == 100 + 10 + 50
    assert estimate_tokens({"messages": msgs}) == 110 + DEFAULT_COMPLETION_TOKENS


@pytest.mark.parametrize(("status", "body", "retry_after", "wait"), [
    (429, b'{"error":{"type":"rate_limit_error","code":"rate_limit_exceeded"}}', None, True),
    (429, b'{"error":{"type":"insufficient_quota","code":"insufficient_quota"}}', None, False),
    (402, b'{"error":{"message":"Insufficient Balance"}}', None, False),
    (529, b'{"error":{"type":"overloaded_error"}}', None, True),
    (503, b'{"code":50505,"message":"The system is too busy now"}', None, True),
    (503, b'{"error":{"message":"upstream down"}}', "3", True),
    (503, b'{"error":{"message":"upstream down"}}', None, False),
    (500, b'{"error":{"message":"overloaded"}}', None, False),
])
def test_which_refusals_are_a_wait(status: int, body: bytes, retry_after: str | None,
                                   wait: bool) -> None:
    assert is_rate_limit(parse_error_body(status, body, retry_after)) is wait


def test_a_mid_stream_error_is_not_a_rate_limit() -> None:
    assert not is_rate_limit(ProviderError("rate limit", status=None))


def test_providers_differ_by_url_key_and_model_and_the_key_is_not_in_the_id() -> None:
    base = provider_id("https://api.x/v1", "sk-secret", "r1")
    assert base == provider_id("https://api.x/v1/", "sk-secret", "r1")
    others = {provider_id("https://api.y/v1", "sk-secret", "r1"),
              provider_id("https://api.x/v1", "sk-other", "r1"),
              provider_id("https://api.x/v1", "sk-secret", "v3")}
    assert base not in others and len(others) == 3 and "secret" not in base


NOW = 1_800_000_000_000  # 2027-01-15T08:00:00Z


@pytest.mark.parametrize(("value", "at"), [
    (2, NOW + 2000), (0.5, NOW + 500), ("2027-01-15T08:00:10Z", NOW + 10_000),
    ("2027-01-15T09:00:10+01:00", NOW + 10_000), ("2027-01-15t08:00:00.25z", NOW + 250),
    ("2027-01-15T07:00:00Z", NOW - 3_600_000),  # past: accepted, fails at once
])
def test_deadlines_parse(value: object, at: int) -> None:
    assert deadlines.parse(value, NOW) == at


@pytest.mark.parametrize("value", [0, -1, True, "tomorrow", "2027-01-15T08:00:00", [1],
                                   float("inf"), 31 * 86_400, "2027-01-15T08:00:60Z"])
def test_bad_deadlines_say_why(value: object) -> None:
    with pytest.raises(deadlines.DeadlineError):
        deadlines.parse(value, NOW)


def test_a_stored_task_uses_its_deadline_or_the_default() -> None:
    assert deadlines.deadline_at({"deadline": 2}, NOW, 86_400) == NOW + 2000
    assert deadlines.deadline_at({}, NOW, 10) == NOW + 10_000
    iso = "2027-01-15T08:00:00+00:00"
    assert deadlines.deadline_at({"deadline": iso}, NOW + 10**12, 10) < NOW + 10**12


def test_the_poll_looks_again_when_a_pause_ends() -> None:
    """A pause (Retry-After) or a spent quota ends by the clock: the poll looks again then,
    not after its backoff (up to a second later, every provider idle meanwhile)."""
    from services.processor.governor import next_look
    from shared.governor import Room
    now = 1_000_000
    assert next_look(1.0, [Room(4, 4, now + 300), Room(4, 0, 0)], now) == pytest.approx(0.301)
    assert next_look(0.1, [Room(4, 4, now + 300)], now) == pytest.approx(0.1)
    assert next_look(1.0, [Room(4, 4, now - 5), Room(4, 4, 0)], now) == pytest.approx(1.0)

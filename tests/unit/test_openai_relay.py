"""The /v1 stream's relay of one kind of text across attempts: a retry that repeats what the
client has is not sent twice, and one that says something else is refused, never spliced."""

from __future__ import annotations

import pytest

from services.edge.openai.chat.api import Diverged, Relay


def relayed(*steps: str | None) -> str:
    """What the client receives; None stands for a ``reset`` (a new attempt)."""
    relay, out = Relay(), ""
    for step in steps:
        if step is None:
            relay.reset()
        else:
            out += relay.feed(step)
    relay.check_finished()
    return out


@pytest.mark.parametrize("steps", [
    ("Hello wor", None, "Hello world"),
    ("Hello wor", None, "Hel", "lo", " wor", "ld"),
    ("Hello wor", None, "Hello wor", None, "Hello", " world"),  # two retries
    ("Hello", " wor", None, "H", "ello worl", "d"),  # a delta that straddles the sent text
    ("", None, "Hello world"),
    (None, "Hello world"),  # a reset before anything was sent
    ("Hello wor", None, "Hello", " wor", "ld"),
])
def test_a_retry_that_repeats_the_sent_text_goes_on_from_where_the_client_is(
        steps: tuple[str | None, ...]) -> None:
    assert relayed(*steps) == "Hello world"


@pytest.mark.parametrize("steps", [
    ("Hello wor", None, "Hi there"),  # differs from its first character on
    ("Hello wor", None, "Hello", " there"),  # differs after a repeated prefix
    ("Hello wor", None, "Hello", " wor", None, "Hi"),  # the third attempt differs
])
def test_a_retry_that_does_not_continue_the_sent_text_is_refused(
        steps: tuple[str | None, ...]) -> None:
    with pytest.raises(Diverged):
        relayed(*steps)


def test_a_diverging_retry_sends_nothing_of_its_own() -> None:
    relay = Relay()
    assert relay.feed("Hello wor") == "Hello wor"
    relay.reset()
    assert relay.feed("Hel") == ""
    with pytest.raises(Diverged):
        relay.feed("p me")
    assert relay.sent == "Hello wor"


def test_a_retry_that_ends_short_of_the_sent_text_is_refused_at_the_end() -> None:
    relay = Relay()
    relay.feed("Hello world")
    relay.reset()
    assert relay.feed("Hello") == ""
    with pytest.raises(Diverged):
        relay.check_finished()

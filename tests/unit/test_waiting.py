"""The two waiting helpers every test and bench shares keep the same rules: the first truthy
answer is returned, an exception is "not yet" and quoted if the wait runs out, and a timed-out
wait names what it waited for."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from harness.waiting import until, wait_for


def test_wait_for_returns_the_first_truthy_answer_through_errors() -> None:
    calls = itertools.count()

    def third_time() -> str | None:
        n = next(calls)
        if n == 0:
            raise ConnectionRefusedError("still starting")
        return "up" if n == 2 else None

    assert wait_for(third_time, 5, "the third call", interval=0) == "up"


def test_wait_for_names_what_it_waited_for_and_the_last_error() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError("nobody there")

    with pytest.raises(AssertionError, match=r"waiting for the server \(last error: "
                                             r"ConnectionRefusedError\('nobody there'\)\)"):
        wait_for(refused, 0.05, "the server", interval=0)


async def test_until_takes_a_plain_or_an_async_predicate() -> None:
    calls = itertools.count()

    async def second_time() -> int:
        return next(calls)  # 0 (falsy), then 1

    assert await until(second_time, 5, "the second call", interval=0) == 1
    assert await until(lambda: "ready", 5, "a plain value") == "ready"


async def test_until_bounds_a_predicate_that_hangs() -> None:
    never = asyncio.Event()
    with pytest.raises(AssertionError, match=r"timed out after 0\.05s waiting for the event$"):
        await until(never.wait, 0.05, "the event")


async def test_until_quotes_the_last_error() -> None:
    with pytest.raises(AssertionError, match=r"waiting for a row \(last error: KeyError"):
        await until(lambda: {}["row"], 0.05, "a row", interval=0)

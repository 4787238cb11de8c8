"""Bounded reads of provider bodies: an endless error page or JSON answer costs a fixed amount;
the deltas of one read go on joined."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.processor.assembler import Delta
from services.processor.provider import _merge, read_capped


class Endless:
    """A body that never ends, counting what was pulled from it."""

    def __init__(self) -> None:
        self.pulled = 0

    async def reads(self) -> AsyncIterator[bytes]:
        while True:
            self.pulled += 4096
            yield b"x" * 4096


async def reads_of(body: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i:i + size]


async def test_an_endless_body_is_cut_at_the_limit() -> None:
    stream = Endless()
    body, whole = await read_capped(stream.reads(), 10_000)
    assert (len(body), whole) == (10_000, False)
    assert stream.pulled <= 10_000 + 4096


@pytest.mark.parametrize("size", [0, 1, 9_999, 10_000])
async def test_a_body_within_the_limit_is_read_whole(size: int) -> None:
    assert await read_capped(reads_of(b"y" * size), 10_000) == (b"y" * size, True)


async def test_one_byte_over_is_not_whole() -> None:
    assert await read_capped(reads_of(b"y" * 10_001), 10_000) == (b"y" * 10_000, False)


def test_the_deltas_of_one_read_are_joined_per_run_of_a_kind() -> None:
    got = _merge([Delta("reasoning", "a"), Delta("reasoning", "b"), Delta("content", "c"),
                  Delta("content", "d"), Delta("content", "e"), Delta("reasoning", "f")])
    assert got == [Delta("reasoning", "ab"), Delta("content", "cde"), Delta("reasoning", "f")]
    assert _merge([Delta("content", "x")]) == [Delta("content", "x")]
    assert _merge([]) == []

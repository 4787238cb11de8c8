"""Bounded reads of provider bodies: an endless error page or JSON answer costs a fixed amount;
the deltas of one read go on joined; a body under another content type is known for a stream
by how it starts, whatever the pieces it arrives in."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.processor.assembler import Delta
from services.processor.provider import _merge, _sniff, is_sse, read_capped


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


@pytest.mark.parametrize(("head", "sse"), [
    (b"data: {\"choices\": []}\n\n", True),
    (b"\xef\xbb\xbf\r\n  event: message\ndata: x\n\n", True),
    (b": keep-alive\n\n", True),
    (b"id: 1\n", True),
    (b"retry: 100\n", True),
    (b'  {"choices": []}', False),
    (b"<html>upstream ok</html>", False),
    (b"", False),
    (b"   \n", False),
])
def test_a_stream_is_known_by_how_it_starts(head: bytes, sse: bool) -> None:
    assert is_sse(head) is sse


async def sniffed(*pieces: bytes) -> tuple[bytes, bytes]:
    """(what _sniff took, what it left) of a body that arrives in these pieces, one a read."""
    reads = iter(pieces)

    async def read() -> bytes:
        return next(reads, b"")

    head = await _sniff(read)
    return head, b"".join(reads)


async def test_sniffing_reads_past_blank_space_and_tiny_pieces_only_as_far_as_it_needs() -> None:
    body = b"\n\n data: {}\n\n" + b"data: [DONE]\n\n"
    head, rest = await sniffed(*(body[i:i + 1] for i in range(len(body))))
    assert is_sse(head) and head == b"\n\n data: "  # six bytes past the blank space
    assert head + rest == body


async def test_sniffing_a_body_of_blank_space_stops_at_its_cap() -> None:
    head, rest = await sniffed(*[b" " * 1000] * 10)
    assert not is_sse(head) and len(head) == 5000 and len(rest) == 5000


async def test_sniffing_a_short_body_takes_all_of_it() -> None:
    assert await sniffed(b"{}") == (b"{}", b"")

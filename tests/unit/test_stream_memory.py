"""A long answer in flight holds its text once, not one object per token: what the processor
keeps per stream (its assembler and its run's partial text, the same Text) stays near the
text's own size."""

from __future__ import annotations

import gc
import random
import tracemalloc

import orjson
import pytest

from services.processor.assembler import LEAF, Delta, StreamAssembler, Text
from services.processor.runner import Partial
from services.processor.sse import SSEDecoder


def _chunk(i: int, kind: str) -> bytes:
    payload = {"object": "chat.completion.chunk", "model": "m",
               "choices": [{"index": 0, "delta": {kind: f" t{i}"}, "finish_reason": None}]}
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _stream(reads: list[bytes]) -> tuple[Partial, StreamAssembler]:
    partial = Partial()  # its text is the assembler's, as the provider call shares it
    decoder, assembler = SSEDecoder(), StreamAssembler(partial.answer)
    for raw in reads:  # one token a read, as a provider streaming in real time sends
        deltas: list[Delta] = []
        for event in decoder.feed(raw):
            deltas += assembler.add_event(event)
        partial.add(deltas)
    return partial, assembler


@pytest.mark.parametrize("tokens", [250, 2000])
def test_a_long_stream_in_flight_holds_about_its_text(tokens: int) -> None:
    """250 tokens: the long-stream bench's answers halfway, where what each piece costs beyond
    its characters shows most (joined every 64 pieces, this held 12.4 KB there)."""
    reads = [_chunk(i, "reasoning_content" if i < tokens // 4 else "content")
             for i in range(tokens)]
    text = "".join(f" t{i}" for i in range(tokens))
    _stream(reads)  # once before measuring: caches made on first use are not the stream's
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        partial, assembler = _stream(reads)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # One copy of the text (the assembler's is the partial's) and little else; one string
    # object per token would be ~56 bytes each.
    assert held < len(text) + 4096, held
    result = assembler.result()
    assert result.reasoning + result.content == text
    assert partial.text("reasoning") + partial.text("content") == text


def test_text_keeps_every_piece_in_order_in_few_strings() -> None:
    rng = random.Random(7)
    pieces = ["".join(rng.choice("abcé€😀") for _ in range(rng.randint(1, 9)))
              for _ in range(5000)]
    text, strings = Text(), 0
    assert not text and text.value() == ""
    for n, piece in enumerate(pieces, 1):
        text.add(piece)
        strings = max(strings, len(text._parts))
        if n in (1, 7, 8, 9, 100, 1234):  # a read midway keeps it whole and adding goes on
            assert text.value() == "".join(pieces[:n])
    assert text and text.value() == "".join(pieces)
    assert strings <= LEAF + 14  # LEAF pieces and about log2(5000) blocks

"""A long answer in flight holds its text, not one object per token: what the processor keeps
per stream (its assembler and its run's partial text) stays near the text's own size."""

from __future__ import annotations

import tracemalloc

import orjson

from services.processor.assembler import Delta, StreamAssembler
from services.processor.runner import Partial
from services.processor.sse import SSEDecoder

TOKENS = 2000


def _chunk(i: int, kind: str) -> bytes:
    payload = {"object": "chat.completion.chunk", "model": "m",
               "choices": [{"index": 0, "delta": {kind: f" t{i}"}, "finish_reason": None}]}
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def test_a_long_stream_in_flight_holds_about_its_text() -> None:
    reads = [_chunk(i, "reasoning_content" if i < TOKENS // 4 else "content")
             for i in range(TOKENS)]
    text = "".join(f" t{i}" for i in range(TOKENS))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        decoder, assembler, partial = SSEDecoder(), StreamAssembler(), Partial()
        for raw in reads:  # one token a read, as a provider streaming in real time sends
            deltas: list[Delta] = []
            for event in decoder.feed(raw):
                deltas += assembler.add_event(event)
            partial.add(deltas)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # One string object per token would be ~56 bytes each: 112 KB here.
    assert held < 4 * len(text) + 8192, held
    result = assembler.result()
    assert result.reasoning + result.content == text
    assert "".join(partial.reasoning) + "".join(partial.content) == text

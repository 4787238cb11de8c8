"""shared.jsonbytes: orjson's JSON in bytes of its own size. orjson's own output pins a buffer
of at least 4 KiB, so each of many held at once (a coalesced round trip's arguments, a
settle's entries) costs that much, whatever its length."""

from __future__ import annotations

import gc
import tracemalloc

import orjson

from shared import jsonbytes

KEPT = 50


def _held_each(dumps: object, obj: object) -> float:
    assert callable(dumps)
    dumps(obj)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [dumps(obj) for _ in range(KEPT)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(kept) == KEPT
    return held / KEPT


def test_the_bytes_are_orjsons_and_hold_about_their_length() -> None:
    entry = {"slot": "s-1", "outcome": "accepted", "n": 12}
    assert jsonbytes.dumps(entry) == orjson.dumps(entry)
    assert _held_each(jsonbytes.dumps, entry) < 2 * len(orjson.dumps(entry)) + 64
    # what the copy is for: orjson's own bytes pin its whole buffer
    assert _held_each(orjson.dumps, entry) > 1024


def test_a_long_answer_is_copied_whole() -> None:
    answer = {"content": "x" * 100_000, "reasoning_content": "y" * 5000}
    assert orjson.loads(jsonbytes.dumps(answer)) == answer

"""shared.jsonbytes: orjson's JSON in bytes of its own size. orjson's own output pins a buffer
of at least 4 KiB, so each of many held at once (a coalesced round trip's arguments, a
settle's entries) costs that much, whatever its length."""

from __future__ import annotations

import orjson

from harness.heap import held_each
from shared import jsonbytes


def test_the_bytes_are_orjsons_and_hold_about_their_length() -> None:
    entry = {"slot": "s-1", "outcome": "accepted", "n": 12}
    assert jsonbytes.dumps(entry) == orjson.dumps(entry)
    assert held_each(lambda: jsonbytes.dumps(entry)) < 2 * len(orjson.dumps(entry)) + 64
    # what the copy is for: orjson's own bytes pin its whole buffer
    assert held_each(lambda: orjson.dumps(entry)) > 1024


def test_a_long_answer_is_copied_whole() -> None:
    answer = {"content": "x" * 100_000, "reasoning_content": "y" * 5000}
    assert orjson.loads(jsonbytes.dumps(answer)) == answer

"""An upload's lines are counted as its chunks arrive (``LineCounter``), the same count as the
whole file split on newlines gives, however the file is cut."""

from __future__ import annotations

import pytest

from services.edge.openai.batch.files import LineCounter

FILES = [b"", b"\n", b"a", b"a\n", b"a\nb", b"a\n\n  \t\nb\n", b" \r\n{}\r\n \x0b\x0c\n x ",
         b'{"custom_id": "1"}\n{"custom_id": "2"}\n\n']


def whole(content: bytes) -> int:
    return sum(1 for line in content.split(b"\n") if line.strip())


@pytest.mark.parametrize("content", FILES)
def test_every_cut_counts_as_the_whole_file(content: bytes) -> None:
    for size in range(1, len(content) + 2):
        counter = LineCounter()
        for start in range(0, len(content), size):
            counter.feed(content[start:start + size])
        assert counter.end() == whole(content), (content, size)
    for cut in range(len(content) + 1):  # and in two pieces, at every place
        counter = LineCounter()
        counter.feed(content[:cut])
        counter.feed(content[cut:])
        assert counter.end() == whole(content), (content, cut)

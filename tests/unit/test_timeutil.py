"""ISO 8601 for clients: the same text datetime writes, milliseconds and a Z."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.timeutil import iso


def _reference(ms: int) -> str:
    stamp = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.mark.parametrize("ms", [0, 1, 999, 1000, 1_796_545_018_925, 1_796_545_019_000,
                                1_796_545_019_999, 4_102_444_799_999])
def test_iso_writes_what_datetime_writes(ms: int) -> None:
    assert iso(ms) == _reference(ms)
    assert iso(str(ms)) == _reference(ms)


def test_iso_of_nothing_is_none() -> None:
    assert iso(None) is None
    assert iso("") is None

"""What objects kept alive hold of the Python heap, as tracemalloc sees it (orjson's bytes
included: ``sys.getsizeof`` reports only their length, not the buffer they pin)."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable


def held_each(make: Callable[[], object], count: int = 50) -> float:
    """Bytes each of ``count`` results of ``make()`` holds while all are kept. ``make`` runs
    once before measuring: caches made on first use are not the results'."""
    make()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [make() for _ in range(count)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(kept) == count
    return held / count

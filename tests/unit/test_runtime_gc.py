"""Every service tunes CPython's collector once it has started (shared/runtime.py)."""

from __future__ import annotations

import gc

from shared.runtime import GC_OLDER, GC_YOUNG, tune_gc


def test_tune_gc_freezes_what_exists_and_collects_the_young_less_often() -> None:
    before = gc.get_threshold()
    assert before[0] < GC_YOUNG
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0  # the imported world is out of the collector's walks
        assert gc.get_threshold() == (GC_YOUNG, GC_OLDER, GC_OLDER)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

"""End-to-end tests share the root fixtures; these names stay importable from here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from harness.browser import headless_chromium
from tests.client import Api, rows


@pytest.fixture(autouse=True)
def _on_each_store(stack_store: str) -> str:
    """Every test here runs on each store (tests/conftest.py: stack_store)."""
    return stack_store


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium for the dashboard tests (harness/browser.py)."""
    with headless_chromium() as driver:
        yield driver


__all__ = ["Api", "rows"]

"""End-to-end tests share the root fixtures; these names stay importable from here."""

from __future__ import annotations

import pytest

from tests.client import Api, rows


@pytest.fixture(autouse=True)
def _on_each_store(stack_store: str) -> str:
    """Every test here runs on each store (tests/conftest.py: stack_store)."""
    return stack_store


__all__ = ["Api", "rows"]

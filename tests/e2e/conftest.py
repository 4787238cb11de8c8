"""End-to-end tests share the root fixtures; these names stay importable from here."""

from __future__ import annotations

from tests.client import Api, rows

__all__ = ["Api", "rows"]

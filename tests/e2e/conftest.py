"""End-to-end tests share the root fixtures; these names stay importable from here."""

from __future__ import annotations

import pytest

from tests.client import Api, rows

pytestmark = pytest.mark.e2e
__all__ = ["Api", "rows"]

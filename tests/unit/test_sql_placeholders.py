"""The statements of the modules that own their tables are written once with ``?``: the
PostgreSQL store numbers them, leaving string literals alone."""

from __future__ import annotations

from shared.store_postgres import numbered


def test_placeholders_are_numbered_in_order_outside_literals() -> None:
    assert numbered("SELECT 1") == "SELECT 1"
    assert numbered("UPDATE t SET a = ?, b = 'x?y' WHERE c IN (?, ?) AND d = '?'") == \
        "UPDATE t SET a = $1, b = 'x?y' WHERE c IN ($2, $3) AND d = '?'"
    assert numbered("SELECT 'it''s', ? FROM t LIMIT ?") == "SELECT 'it''s', $1 FROM t LIMIT $2"

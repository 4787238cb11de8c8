"""A small synchronous client of the edge, and a reader of the store (either), for tests."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import httpx

from harness.postgres import run_sql
from harness.processes import CLIENT_TLS
from harness.waiting import wait_for


class Api:
    """A small synchronous client of the edge for tests."""

    def __init__(self, base: str, key: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=base, timeout=30, headers=headers, verify=CLIENT_TLS)

    def submit(self, body: dict[str, Any] | None = None, **kw: Any) -> str:
        r = self.http.post("/api/tasks", json=body or {"prompt": "hello"}, **kw)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def get(self, task_id: str) -> dict[str, Any]:
        r = self.http.get(f"/api/tasks/{task_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_terminal(self, task_id: str, timeout: float = 60) -> dict[str, Any]:
        return dict(wait_for(
            lambda: (t := self.get(task_id))["status"] in ("succeeded", "failed", "cancelled")
            and t, timeout, f"task {task_id} to finish"))


def rows(db: Path | str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """One statement (``?`` placeholders) on a stack's store: ``db`` is the SQLite file or a
    postgresql:// URL (``Stack.store_path``). Writes are committed."""
    if isinstance(db, str) and db.startswith(("postgresql://", "postgres://")):
        numbered = iter(range(1, len(params) + 1))
        return run_sql(db, re.sub(r"\?", lambda _m: f"${next(numbered)}", sql), *params)
    conn = sqlite3.connect(db)
    try:
        out = list(conn.execute(sql, params).fetchall())
        conn.commit()
        return out
    finally:
        conn.close()

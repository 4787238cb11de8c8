"""The Batch API's persistence: files, OpenAI batches and their lines (migration 0003).

Kept apart from :mod:`shared.store` (tasks) behind its own methods, so a backend other than
SQLite implements this class, not the call sites. It runs on a :class:`SqliteStore`'s two
connections only (raw SQLite SQL; the edge serves the Batch API on no other store): reads on its
read thread, writes on its writer thread, each call's statements in one transaction (a finished
batch's files with its new status: all or nothing).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from shared.store_sqlite import SqliteStore

PART_BYTES = 1 << 20  # a D1 row stays well under its 2 MB limit
Statement = tuple[str, tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class FileMeta:
    id: str
    tenant: str
    purpose: str
    filename: str
    bytes: int
    lines: int
    created_at: int  # Unix seconds, as OpenAI's file object
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class BatchRecord:
    id: str
    tenant: str
    status: str
    submitted: int          # lines queued as tasks so far (a prefix of the lines)
    doc: dict[str, Any]     # the batch object as clients see it


@dataclass(frozen=True, slots=True)
class Line:
    line: int
    custom_id: str
    task_id: str
    request: str


@dataclass(frozen=True, slots=True)
class Progress:
    """Counts of a batch's lines whose task has its final row."""
    succeeded: int
    failed: int
    cancelled: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.cancelled


def _file_meta(row: sqlite3.Row) -> FileMeta:
    return FileMeta(row["id"], row["tenant"], row["purpose"], row["filename"], row["bytes"],
                    row["lines"], row["created_at"], row["expires_at"])


def _batch(row: sqlite3.Row) -> BatchRecord:
    return BatchRecord(row["id"], row["tenant"], row["status"], row["submitted"],
                       orjson.loads(row["doc"]))


def save_file_statements(meta: FileMeta, content: bytes,
                         guard: tuple[str, str] | None = None) -> list[Statement]:
    """The rows of a file; ``INSERT OR IGNORE`` so a file written twice stays one file. With
    ``guard`` (batch id, status) the rows are only written while that batch has that status:
    a finished batch's files ride in the transaction of its status change and must not outlive
    a change that missed."""
    where, extra = "", tuple[str, ...]()
    if guard is not None:
        where = " WHERE EXISTS (SELECT 1 FROM openai_batches WHERE id = ? AND status = ?)"
        extra = guard
    out: list[Statement] = [(
        "INSERT OR IGNORE INTO files (id, tenant, purpose, filename, bytes, lines, created_at, "
        "expires_at) SELECT ?, ?, ?, ?, ?, ?, ?, ?" + where,
        (meta.id, meta.tenant, meta.purpose, meta.filename, meta.bytes, meta.lines,
         meta.created_at, meta.expires_at, *extra))]
    for n, start in enumerate(range(0, max(len(content), 1), PART_BYTES)):
        out.append(("INSERT OR IGNORE INTO file_parts (file_id, part, data) SELECT ?, ?, ?"
                    + where, (meta.id, n, content[start:start + PART_BYTES], *extra)))
    return out


class BatchStore:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    # --- files -------------------------------------------------------------------------------
    async def save_file(self, meta: FileMeta, content: bytes) -> None:
        await self.store.write_together(save_file_statements(meta, content))

    async def get_file(self, tenant: str, file_id: str) -> FileMeta | None:
        def q(c: sqlite3.Connection) -> FileMeta | None:
            row = c.execute("SELECT * FROM files WHERE id = ? AND tenant = ?",
                            (file_id, tenant)).fetchone()
            return _file_meta(row) if row else None
        return await self.store.read(q)

    async def list_files(self, tenant: str, purpose: str | None, after: str | None,
                         limit: int) -> list[FileMeta]:
        """Newest first; ``after`` is the id of the last file of the previous page."""
        def q(c: sqlite3.Connection) -> list[FileMeta]:
            sql, args = "SELECT * FROM files WHERE tenant = ?", [tenant]
            if purpose:
                sql += " AND purpose = ?"
                args.append(purpose)
            if after:
                sql += (" AND (created_at, id) < (SELECT created_at, id FROM files "
                        "WHERE id = ? AND tenant = ?)")
                args += [after, tenant]
            sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
            return [_file_meta(r) for r in c.execute(sql, (*args, limit))]
        return await self.store.read(q)

    async def file_content(self, file_id: str) -> bytes:
        def q(c: sqlite3.Connection) -> bytes:
            rows = c.execute("SELECT data FROM file_parts WHERE file_id = ? ORDER BY part",
                             (file_id,))
            return b"".join(bytes(r[0]) for r in rows)
        return await self.store.read(q)

    async def delete_file(self, tenant: str, file_id: str) -> bool:
        deleted, _parts = await self.store.write_together([
            ("DELETE FROM files WHERE id = ? AND tenant = ?", (file_id, tenant)),
            ("DELETE FROM file_parts WHERE file_id = ? AND NOT EXISTS "
             "(SELECT 1 FROM files WHERE id = ?)", (file_id, file_id))])
        return deleted

    # --- batches -----------------------------------------------------------------------------
    async def create_batch(self, record: BatchRecord, seq: int) -> None:
        await self.store.write_together([(
            "INSERT INTO openai_batches (id, tenant, seq, status, submitted, doc) "
            "VALUES (?, ?, ?, ?, 0, ?)",
            (record.id, record.tenant, seq, record.status, orjson.dumps(record.doc).decode()))])

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        def q(c: sqlite3.Connection) -> BatchRecord | None:
            row = c.execute("SELECT * FROM openai_batches WHERE id = ?", (batch_id,)).fetchone()
            return _batch(row) if row else None
        return await self.store.read(q)

    async def list_batches(self, tenant: str, after: str | None,
                           limit: int) -> list[BatchRecord]:
        def q(c: sqlite3.Connection) -> list[BatchRecord]:
            sql, args = "SELECT * FROM openai_batches WHERE tenant = ?", [tenant]
            if after:
                sql += (" AND seq < (SELECT seq FROM openai_batches WHERE id = ? "
                        "AND tenant = ?)")
                args += [after, tenant]
            sql += " ORDER BY seq DESC LIMIT ?"
            return [_batch(r) for r in c.execute(sql, (*args, limit))]
        return await self.store.read(q)

    async def active_batch_ids(self, statuses: Sequence[str]) -> list[str]:
        def q(c: sqlite3.Connection) -> list[str]:
            marks = ", ".join("?" * len(statuses))
            return [r[0] for r in c.execute(
                f"SELECT id FROM openai_batches WHERE status IN ({marks}) ORDER BY seq",
                tuple(statuses))]
        return await self.store.read(q)

    @staticmethod
    def update_statement(record: BatchRecord, expected: Sequence[str]) -> Statement:
        """Replace the batch's doc, status and cursor only while its status is one of
        ``expected``: a status only moves forward, and a cancel that landed in between wins."""
        marks = ", ".join("?" * len(expected))
        return (f"UPDATE openai_batches SET status = ?, submitted = ?, doc = ? "
                f"WHERE id = ? AND status IN ({marks})",
                (record.status, record.submitted, orjson.dumps(record.doc).decode(), record.id,
                 *expected))

    async def update_batch(self, record: BatchRecord, expected: Sequence[str],
                           also: Sequence[Statement] = ()) -> bool:
        """The update (see ``update_statement``) with ``also`` in the same transaction, after
        it; False when the status had moved. Statements in ``also`` that must not run then are
        guarded on the new status (``save_file_statements``'s ``guard``)."""
        first, *_rest = await self.store.write_together(
            [self.update_statement(record, expected), *also])
        return first

    async def request_cancel(self, tenant: str, batch_id: str, now_s: int) -> bool:
        """``validating``/``in_progress`` -> ``cancelling`` in one statement that touches only
        the status (the runner owns the counts and the cursor); False if it was in neither."""
        [ok] = await self.store.write_together([(
            "UPDATE openai_batches SET status = 'cancelling', doc = json_set(doc, '$.status', "
            "'cancelling', '$.cancelling_at', ?) WHERE id = ? AND tenant = ? "
            "AND status IN ('validating', 'in_progress')", (now_s, batch_id, tenant))])
        return ok

    # --- lines -------------------------------------------------------------------------------
    @staticmethod
    def lines_statements(batch_id: str, lines: Sequence[Line]) -> list[Statement]:
        return [("INSERT OR IGNORE INTO batch_lines (batch_id, line, custom_id, task_id, "
                 "request) VALUES (?, ?, ?, ?, ?)",
                 (batch_id, ln.line, ln.custom_id, ln.task_id, ln.request)) for ln in lines]

    async def lines(self, batch_id: str, start: int, stop: int) -> list[Line]:
        """Lines numbered ``start`` <= line < ``stop`` (0-based), in order."""
        def q(c: sqlite3.Connection) -> list[Line]:
            return [Line(r[0], r[1], r[2], r[3]) for r in c.execute(
                "SELECT line, custom_id, task_id, request FROM batch_lines WHERE batch_id = ? "
                "AND line >= ? AND line < ? ORDER BY line", (batch_id, start, stop))]
        return await self.store.read(q)

    async def progress(self, batch_id: str) -> Progress:
        def q(c: sqlite3.Connection) -> Progress:
            row = c.execute(
                "SELECT COALESCE(SUM(t.status = 'succeeded'), 0), "
                "COALESCE(SUM(t.status = 'failed'), 0), "
                "COALESCE(SUM(t.status = 'cancelled'), 0), "
                "COALESCE(SUM(t.prompt_tokens), 0), COALESCE(SUM(t.completion_tokens), 0) "
                "FROM batch_lines l JOIN tasks t ON t.id = l.task_id WHERE l.batch_id = ?",
                (batch_id,)).fetchone()
            return Progress(*(int(v) for v in row))
        return await self.store.read(q)

    async def unfinished_task_ids(self, batch_id: str, below: int) -> list[str]:
        """Tasks of lines < ``below`` (the queued ones) with no final row yet."""
        def q(c: sqlite3.Connection) -> list[str]:
            return [r[0] for r in c.execute(
                "SELECT l.task_id FROM batch_lines l LEFT JOIN tasks t ON t.id = l.task_id "
                "WHERE l.batch_id = ? AND l.line < ? AND t.id IS NULL", (batch_id, below))]
        return await self.store.read(q)

    async def results(self, batch_id: str) -> list[tuple[Line, dict[str, Any] | None]]:
        """Every line with its task's final row (None: never ran), in line order."""
        def q(c: sqlite3.Connection) -> list[tuple[Line, dict[str, Any] | None]]:
            out: list[tuple[Line, dict[str, Any] | None]] = []
            for r in c.execute(
                    "SELECT l.line, l.custom_id, l.task_id, t.* FROM batch_lines l "
                    "LEFT JOIN tasks t ON t.id = l.task_id WHERE l.batch_id = ? "
                    "ORDER BY l.line", (batch_id,)):
                row = dict(r)
                line = Line(row.pop("line"), row.pop("custom_id"), row.pop("task_id"), "")
                out.append((line, row if row.get("id") else None))
            return out
        return await self.store.read(q)

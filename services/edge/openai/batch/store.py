"""The Batch API's persistence: files, OpenAI batches and their lines (migration 0003).

Kept apart from the tasks' methods of :class:`shared.store.Store`, on any of its backends:
each query is written once, in the SQL both speak (``?`` placeholders, ``ON CONFLICT``), and
run through ``Store.fetch`` and ``Store.write_together``, which makes each call's statements
one transaction (a finished batch's files with its new status: all or nothing).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from shared.store import TASK_COLUMNS, Statement, Store

PART_BYTES = 1 << 20  # a D1 row stays well under its 2 MB limit
UPLOADING = "~uploading"  # the purpose of a file still arriving (no client purpose is)
CANCELLABLE = ("validating", "in_progress")
_TASK_FIELDS = ", ".join(f"t.{c}" for c in TASK_COLUMNS)


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


def _file_meta(row: dict[str, Any]) -> FileMeta:
    return FileMeta(row["id"], row["tenant"], row["purpose"], row["filename"], row["bytes"],
                    row["lines"], row["created_at"], row["expires_at"])


def _batch(row: dict[str, Any]) -> BatchRecord:
    return BatchRecord(row["id"], row["tenant"], row["status"], row["submitted"],
                       orjson.loads(row["doc"]))


def save_file_statements(meta: FileMeta, content: bytes) -> list[Statement]:
    """The rows of a file; a file written twice stays one file."""
    out: list[Statement] = [(
        "INSERT INTO files (id, tenant, purpose, filename, bytes, lines, created_at, expires_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (meta.id, meta.tenant, meta.purpose, meta.filename, meta.bytes, meta.lines,
         meta.created_at, meta.expires_at))]
    for n, start in enumerate(range(0, max(len(content), 1), PART_BYTES)):
        out.append(("INSERT INTO file_parts (file_id, part, data) VALUES (?, ?, ?) "
                    "ON CONFLICT DO NOTHING", (meta.id, n, content[start:start + PART_BYTES])))
    return out


class BatchStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- files -------------------------------------------------------------------------------
    async def save_file(self, meta: FileMeta, content: bytes) -> None:
        await self.store.write_together(save_file_statements(meta, content))

    async def get_file(self, tenant: str, file_id: str) -> FileMeta | None:
        rows = await self.store.fetch(
            "SELECT * FROM files WHERE id = ? AND tenant = ? AND purpose <> ?",
            file_id, tenant, UPLOADING)
        return _file_meta(rows[0]) if rows else None

    # An upload is written as it arrives, a part at a time, so the edge holds one part of it,
    # not the file: its row is written first with the purpose UPLOADING (no read, list or
    # batch sees such a file), its parts as they fill, and the row gets its real purpose,
    # size and line count last. An upload that fails is deleted at once; one whose edge died
    # is deleted by ``sweep_uploads`` once it is older than any upload may last.
    async def begin_upload(self, meta: FileMeta) -> None:
        await self.store.write_together(save_file_statements(
            FileMeta(meta.id, meta.tenant, UPLOADING, meta.filename, 0, 0, meta.created_at,
                     None), b"")[:1])

    async def save_part(self, file_id: str, part: int, data: bytes) -> None:
        await self.store.write_together([(
            "INSERT INTO file_parts (file_id, part, data) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING", (file_id, part, data))])

    async def end_upload(self, meta: FileMeta, parts: int) -> None:
        """The file whole: its row says so (and an empty file gets its one empty part)."""
        statements: list[Statement] = [(
            "UPDATE files SET purpose = ?, bytes = ?, lines = ? WHERE id = ? AND purpose = ?",
            (meta.purpose, meta.bytes, meta.lines, meta.id, UPLOADING))]
        if parts == 0:
            statements += save_file_statements(meta, b"")[1:]
        [ok, *_] = await self.store.write_together(statements, guarded=True)
        if not ok:  # swept meanwhile: only an upload slower than any may be
            raise LookupError(meta.id)

    async def abandon_upload(self, file_id: str) -> None:
        await self.store.write_together([
            ("DELETE FROM file_parts WHERE file_id = ?", (file_id,)),
            ("DELETE FROM files WHERE id = ? AND purpose = ?", (file_id, UPLOADING))])

    async def sweep_uploads(self, started_before_s: int) -> int:
        """Delete the uploads started before ``started_before_s`` that never ended (their
        edge died mid-upload); how many."""
        rows = await self.store.fetch(
            "SELECT id FROM files WHERE purpose = ? AND created_at < ?", UPLOADING,
            started_before_s)
        for row in rows:
            await self.abandon_upload(row["id"])
        return len(rows)

    async def file_parts(self, file_id: str) -> AsyncIterator[bytes]:
        """A file's content, one part at a time (a reader holds one part, not the file)."""
        [row] = await self.store.fetch(
            "SELECT COUNT(*) AS n FROM file_parts WHERE file_id = ?", file_id)
        for part in range(int(row["n"])):
            rows = await self.store.fetch(
                "SELECT data FROM file_parts WHERE file_id = ? AND part = ?", file_id, part)
            if rows:
                yield bytes(rows[0]["data"])

    async def list_files(self, tenant: str, purpose: str | None, after: str | None,
                         limit: int) -> list[FileMeta]:
        """Newest first; ``after`` is the id of the last file of the previous page."""
        sql, args = "SELECT * FROM files WHERE tenant = ? AND purpose <> ?", [tenant, UPLOADING]
        if purpose:
            sql += " AND purpose = ?"
            args.append(purpose)
        if after:
            sql += (" AND (created_at, id) < (SELECT created_at, id FROM files "
                    "WHERE id = ? AND tenant = ?)")
            args += [after, tenant]
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        return [_file_meta(r) for r in await self.store.fetch(sql, *args, limit)]

    async def file_content(self, file_id: str) -> bytes:
        rows = await self.store.fetch(
            "SELECT data FROM file_parts WHERE file_id = ? ORDER BY part", file_id)
        return b"".join(bytes(r["data"]) for r in rows)

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
            "VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT DO NOTHING",
            (record.id, record.tenant, seq, record.status, orjson.dumps(record.doc).decode()))])

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        rows = await self.store.fetch("SELECT * FROM openai_batches WHERE id = ?", batch_id)
        return _batch(rows[0]) if rows else None

    async def list_batches(self, tenant: str, after: str | None,
                           limit: int) -> list[BatchRecord]:
        sql, args = "SELECT * FROM openai_batches WHERE tenant = ?", [tenant]
        if after:
            sql += " AND seq < (SELECT seq FROM openai_batches WHERE id = ? AND tenant = ?)"
            args += [after, tenant]
        sql += " ORDER BY seq DESC LIMIT ?"
        return [_batch(r) for r in await self.store.fetch(sql, *args, limit)]

    async def active_batch_ids(self, statuses: Sequence[str]) -> list[str]:
        marks = ", ".join("?" * len(statuses))
        rows = await self.store.fetch(
            f"SELECT id FROM openai_batches WHERE status IN ({marks}) ORDER BY seq", *statuses)
        return [r["id"] for r in rows]

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
        """The update (see ``update_statement``) with ``also`` in the same transaction, run
        only when the update took; False when the status had moved (then nothing changed)."""
        first, *_rest = await self.store.write_together(
            [self.update_statement(record, expected), *also], guarded=True)
        return first

    async def request_cancel(self, tenant: str, batch_id: str, now_s: int) -> bool:
        """``validating``/``in_progress`` -> ``cancelling``, touching only the status (the
        runner owns the counts and the cursor): a compare-and-set on the doc as it was read,
        read again when the runner wrote it in between. False if it was in neither status."""
        while True:
            rows = await self.store.fetch(
                "SELECT status, doc FROM openai_batches WHERE id = ? AND tenant = ?",
                batch_id, tenant)
            if not rows or rows[0]["status"] not in CANCELLABLE:
                return False
            seen = rows[0]["doc"]
            doc = {**orjson.loads(seen), "status": "cancelling", "cancelling_at": now_s}
            [ok] = await self.store.write_together([(
                "UPDATE openai_batches SET status = 'cancelling', doc = ? WHERE id = ? "
                "AND status = ? AND doc = ?",
                (orjson.dumps(doc).decode(), batch_id, rows[0]["status"], seen))])
            if ok:
                return True

    # --- lines -------------------------------------------------------------------------------
    @staticmethod
    def lines_statements(batch_id: str, lines: Sequence[Line]) -> list[Statement]:
        return [("INSERT INTO batch_lines (batch_id, line, custom_id, task_id, request) "
                 "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                 (batch_id, ln.line, ln.custom_id, ln.task_id, ln.request)) for ln in lines]

    async def lines(self, batch_id: str, start: int, stop: int) -> list[Line]:
        """Lines numbered ``start`` <= line < ``stop`` (0-based), in order."""
        rows = await self.store.fetch(
            "SELECT line, custom_id, task_id, request FROM batch_lines WHERE batch_id = ? "
            "AND line >= ? AND line < ? ORDER BY line", batch_id, start, stop)
        return [Line(r["line"], r["custom_id"], r["task_id"], r["request"]) for r in rows]

    async def progress(self, batch_id: str) -> Progress:
        [row] = await self.store.fetch(
            "SELECT COALESCE(SUM(CASE WHEN t.status = 'succeeded' THEN 1 ELSE 0 END), 0) AS s, "
            "COALESCE(SUM(CASE WHEN t.status = 'failed' THEN 1 ELSE 0 END), 0) AS f, "
            "COALESCE(SUM(CASE WHEN t.status = 'cancelled' THEN 1 ELSE 0 END), 0) AS c, "
            "COALESCE(SUM(t.prompt_tokens), 0) AS p, COALESCE(SUM(t.completion_tokens), 0) AS o "
            "FROM batch_lines l JOIN tasks t ON t.id = l.task_id WHERE l.batch_id = ?",
            batch_id)
        return Progress(*(int(v) for v in row.values()))  # PostgreSQL's sums are numeric

    async def unfinished_lines(self, batch_id: str, below: int) -> list[Line]:
        """Lines < ``below`` (the queued ones) whose task has no final row yet."""
        rows = await self.store.fetch(
            "SELECT l.line, l.custom_id, l.task_id, l.request FROM batch_lines l "
            "LEFT JOIN tasks t ON t.id = l.task_id "
            "WHERE l.batch_id = ? AND l.line < ? AND t.id IS NULL ORDER BY l.line",
            batch_id, below)
        return [Line(r["line"], r["custom_id"], r["task_id"], r["request"]) for r in rows]

    async def results(self, batch_id: str) -> list[tuple[Line, dict[str, Any] | None]]:
        """Every line with its task's final row (None: never ran), in line order."""
        out: list[tuple[Line, dict[str, Any] | None]] = []
        for row in await self.store.fetch(
                f"SELECT l.line, l.custom_id, l.task_id, {_TASK_FIELDS} FROM batch_lines l "
                "LEFT JOIN tasks t ON t.id = l.task_id WHERE l.batch_id = ? ORDER BY l.line",
                batch_id):
            line = Line(row.pop("line"), row.pop("custom_id"), row.pop("task_id"), "")
            out.append((line, row if row.get("id") else None))
        return out

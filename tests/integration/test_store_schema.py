"""The two migration sets describe one schema, and each stays what its database accepts:
``migrations/*.sql`` in Cloudflare D1's format, ``migrations/postgres/*.sql`` applied once
however many services start together."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from shared.store import MIGRATIONS_DIR, TABLES, make_store
from shared.store_postgres import PG_MIGRATIONS_DIR
from shared.store_sqlite import apply_migrations, migration_files, split_statements

# SQLite's declared type -> what PostgreSQL reports for its twin. SQLite INTEGER is 64-bit.
TYPES = {"INTEGER": "bigint", "TEXT": "text", "BLOB": "bytea",
         "TIMESTAMP": "timestamp without time zone"}
# The Batch API's and webhooks' tables (migration 0003): compared like the core ones.
BATCH_TABLES = ("files", "file_parts", "openai_batches", "batch_lines", "webhook_secrets",
                "webhook_endpoints", "task_webhooks", "webhook_deliveries", "webhook_attempts",
                "webhook_cursor")
COMPARED = (*TABLES, *BATCH_TABLES)
# What PostgreSQL has and SQLite need not (migration 0004): a task row's place in commit order,
# which SQLite's rowid already is.
PG_ONLY = {"tasks": {"column": "txid", "index": "idx_tasks_txid"}}


def sqlite_schema(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        apply_migrations(conn)
        out: dict[str, Any] = {}
        for table in COMPARED:
            cols = conn.execute(f"PRAGMA table_info({table})").fetchall()
            indexes = {
                name: [r[2] for r in conn.execute(f"PRAGMA index_info({name})")]
                for _seq, name, _unique, origin, _partial
                in conn.execute(f"PRAGMA index_list({table})") if origin == "c"}
            out[table] = {
                "columns": [(c[1], TYPES[c[2]], bool(c[3]) or c[5] > 0, _default(c[4]))
                            for c in cols],
                "primary_key": [c[1] for c in sorted(cols, key=lambda c: c[5]) if c[5] > 0],
                "indexes": indexes}
        return out
    finally:
        conn.close()


async def postgres_schema(url: str) -> dict[str, Any]:
    store = make_store(url, patience_s=5)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(url)
    try:
        out: dict[str, Any] = {}
        for table in COMPARED:
            cols = await conn.fetch(
                "SELECT column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_name = $1 "
                "ORDER BY ordinal_position", table)
            index_rows = await conn.fetch(
                "SELECT i.relname AS name, x.indisprimary AS pk, "
                "array_agg(a.attname ORDER BY k.n) AS cols "
                "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
                "JOIN pg_class t ON t.oid = x.indrelid "
                "CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, n) "
                "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum "
                "WHERE t.relname = $1 GROUP BY i.relname, x.indisprimary", table)
            out[table] = {
                "columns": [(c["column_name"], c["data_type"], c["is_nullable"] == "NO",
                             _default(c["column_default"])) for c in cols],
                "primary_key": next(list(r["cols"]) for r in index_rows if r["pk"]),
                "indexes": {r["name"]: list(r["cols"]) for r in index_rows if not r["pk"]}}
        return out
    finally:
        await conn.close()


def _default(value: str | None) -> str | None:
    """``''::text`` (PostgreSQL) and ``''`` (SQLite) are the same default."""
    return None if value is None else re.sub(r"::[a-z ]+$", "", value)


async def test_both_migration_sets_give_the_same_tables_columns_and_indexes(
        tmp_path: Path, pg_url: str) -> None:
    lite = sqlite_schema(tmp_path / "schema.db")
    pg = await postgres_schema(pg_url)
    assert set(lite) == set(pg) == set(COMPARED)
    for table, extra in PG_ONLY.items():
        columns = pg[table]["columns"]
        assert [c[0] for c in columns].count(extra["column"]) == 1, table
        pg[table]["columns"] = [c for c in columns if c[0] != extra["column"]]
        assert pg[table]["indexes"].pop(extra["index"]) == [extra["column"]], table
    for table in COMPARED:
        assert lite[table] == pg[table], table
    assert lite["tasks"]["indexes"]  # the comparison saw the indexes at all


def test_each_postgresql_migration_has_its_d1_twin() -> None:
    """One version history: d1_migrations records the same names on both stores."""
    d1 = [p.name for p in migration_files(MIGRATIONS_DIR)]
    assert d1 and d1 == [p.name for p in migration_files(PG_MIGRATIONS_DIR)]


def test_d1_migrations_keep_to_what_d1_accepts(tmp_path: Path) -> None:
    """D1 runs each file as plain statements inside its own transaction: no BEGIN/COMMIT, no
    PRAGMA, and every statement idempotent-safe to apply on a fresh database."""
    for path in migration_files(MIGRATIONS_DIR):
        for statement in split_statements(path.read_text()):
            head = statement.split(None, 1)[0].upper()
            assert head in {"CREATE", "ALTER", "INSERT", "DROP", "UPDATE", "DELETE"}, \
                (path.name, statement[:60])
    conn = sqlite3.connect(tmp_path / "d1.db")
    try:
        assert apply_migrations(conn) == [p.name for p in migration_files(MIGRATIONS_DIR)]
        assert apply_migrations(conn) == []
        names = [r[0] for r in conn.execute("SELECT name FROM d1_migrations ORDER BY id")]
        assert names == [p.name for p in migration_files(MIGRATIONS_DIR)]
    finally:
        conn.close()


async def test_ten_services_starting_at_once_migrate_once(pg_url: str) -> None:
    stores = [make_store(pg_url, pool_size=1, patience_s=30) for _ in range(10)]
    await asyncio.gather(*(s.open() for s in stores))
    await asyncio.gather(*(s.close() for s in stores))
    conn = await asyncpg.connect(pg_url)
    try:
        names = [r[0] for r in await conn.fetch("SELECT name FROM d1_migrations ORDER BY id")]
    finally:
        await conn.close()
    assert names == [p.name for p in migration_files(PG_MIGRATIONS_DIR)]

-- Each task row's place in commit order, for readers that follow the tasks table as a log (the
-- webhook scanner, shared/webhook_store.py): the id of the transaction that inserted the row.
-- SQLite's rowid is that place on the embedded store, so ../0004_task_position.sql adds
-- nothing. Here transactions commit in any order and a sequence would not do: a row may be
-- committed below one already read. Transaction ids have a horizon instead, the oldest one
-- still running, under which nothing is committed any more (PostgresStore.settled).
-- An upsert keeps the row's first txid, as SQLite keeps its rowid. Rows already there get the
-- id of this migration's transaction, below every later row.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS txid BIGINT NOT NULL
  DEFAULT (pg_current_xact_id()::text::bigint);

CREATE INDEX IF NOT EXISTS idx_tasks_txid ON tasks (txid);

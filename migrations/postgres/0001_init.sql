-- Sluice store schema, PostgreSQL twin of ../0001_init.sql (same file name, same tables,
-- columns and indexes; tests/unit/test_store_schema.py keeps the two from drifting).
-- SQLite INTEGER is 64-bit, so every INTEGER column is BIGINT here (timestamps are in ms).
-- The services apply this set at start-up under an advisory lock, recorded in d1_migrations.

CREATE TABLE IF NOT EXISTS tasks (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL DEFAULT '',
  status TEXT NOT NULL,
  model TEXT,
  request TEXT NOT NULL,
  content TEXT,
  reasoning_content TEXT,
  finish_reason TEXT,
  prompt_tokens BIGINT,
  completion_tokens BIGINT,
  total_tokens BIGINT,
  attempts BIGINT NOT NULL DEFAULT 0,
  error TEXT,
  batch_id TEXT,
  processor TEXT,
  fence BIGINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL,
  started_at BIGINT,
  completed_at BIGINT
);

CREATE INDEX IF NOT EXISTS idx_tasks_tenant_status ON tasks (tenant, status);
CREATE INDEX IF NOT EXISTS idx_tasks_batch ON tasks (batch_id);

CREATE TABLE IF NOT EXISTS batches (
  id TEXT PRIMARY KEY,
  size BIGINT NOT NULL,
  reason TEXT NOT NULL,
  processor TEXT,
  created_at BIGINT NOT NULL,
  claimed_at BIGINT,
  completed_at BIGINT
);

CREATE TABLE IF NOT EXISTS idempotency_keys (
  tenant TEXT NOT NULL,
  key TEXT NOT NULL,
  task_id TEXT NOT NULL,
  body_hash TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (tenant, key)
);

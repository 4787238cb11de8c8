-- Sluice store schema. Cloudflare D1 format: plain statements, no BEGIN/COMMIT, no PRAGMA.

-- One row per task, written once it is terminal; `fence` is the lease number of the writer,
-- and a row is only ever replaced by a writer holding a higher one.
CREATE TABLE IF NOT EXISTS tasks (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL DEFAULT '',
  status TEXT NOT NULL,
  model TEXT,
  request TEXT NOT NULL,
  content TEXT,
  reasoning_content TEXT,
  finish_reason TEXT,
  prompt_tokens INTEGER,
  completion_tokens INTEGER,
  total_tokens INTEGER,
  attempts INTEGER NOT NULL DEFAULT 0,
  error TEXT,
  batch_id TEXT,
  processor TEXT,
  fence INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL,
  started_at INTEGER,
  completed_at INTEGER
);

CREATE INDEX IF NOT EXISTS idx_tasks_tenant_status ON tasks (tenant, status);
CREATE INDEX IF NOT EXISTS idx_tasks_batch ON tasks (batch_id);

-- One row per batch a processor took; `reason` says why it was flushed: size, timer, idle,
-- or handoff (re-queued by a draining processor).
CREATE TABLE IF NOT EXISTS batches (
  id TEXT PRIMARY KEY,
  size INTEGER NOT NULL,
  reason TEXT NOT NULL,
  processor TEXT,
  created_at INTEGER NOT NULL,
  claimed_at INTEGER,
  completed_at INTEGER
);

-- Idempotency keys outlive Redis: a key seen once maps to its task for at least 24 h.
CREATE TABLE IF NOT EXISTS idempotency_keys (
  tenant TEXT NOT NULL,
  key TEXT NOT NULL,
  task_id TEXT NOT NULL,
  body_hash TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (tenant, key)
);

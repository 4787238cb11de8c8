-- PostgreSQL twin of ../0003_batch_api.sql (same tables, columns and indexes).
-- INTEGER is BIGINT and BLOB is BYTEA here, as in 0001_init.sql.


-- An uploaded (purpose 'batch') or produced (purpose 'batch_output') file of a tenant. Its
-- content is in file_parts, cut into parts of at most 1 MiB so no row outgrows D1's limit.
CREATE TABLE IF NOT EXISTS files (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  purpose TEXT NOT NULL,
  filename TEXT NOT NULL,
  bytes BIGINT NOT NULL,
  lines BIGINT NOT NULL,
  created_at BIGINT NOT NULL,
  expires_at BIGINT
);

CREATE INDEX IF NOT EXISTS idx_files_tenant ON files (tenant, created_at);

CREATE TABLE IF NOT EXISTS file_parts (
  file_id TEXT NOT NULL,
  part BIGINT NOT NULL,
  data BYTEA NOT NULL,
  PRIMARY KEY (file_id, part)
);

-- One row per OpenAI batch. `doc` is the batch object's JSON as clients see it (status,
-- timestamps in Unix seconds, request_counts, errors, usage...); `status` and `seq` are copied
-- out of it for the runner's queries and for cursor pagination.
CREATE TABLE IF NOT EXISTS openai_batches (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  seq BIGINT NOT NULL,
  status TEXT NOT NULL,
  submitted BIGINT NOT NULL DEFAULT 0,
  doc TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_openai_batches_tenant ON openai_batches (tenant, seq);
CREATE INDEX IF NOT EXISTS idx_openai_batches_status ON openai_batches (status);

-- The lines of a validated batch, each with the id of the task that runs it (derived from the
-- batch id and the line number, so a line is never queued as two tasks).
CREATE TABLE IF NOT EXISTS batch_lines (
  batch_id TEXT NOT NULL,
  line BIGINT NOT NULL,
  custom_id TEXT NOT NULL,
  task_id TEXT NOT NULL,
  request TEXT NOT NULL,
  PRIMARY KEY (batch_id, line)
);

-- Webhooks (Standard Webhooks). A tenant's signing secret; during a rotation the previous one
-- also signs until `previous_until` (Unix seconds).
CREATE TABLE IF NOT EXISTS webhook_secrets (
  tenant TEXT PRIMARY KEY,
  secret TEXT NOT NULL,
  previous TEXT,
  previous_until BIGINT
);

CREATE TABLE IF NOT EXISTS webhook_endpoints (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  url TEXT NOT NULL,
  events TEXT NOT NULL,
  created_at BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_webhook_endpoints_tenant ON webhook_endpoints (tenant);

-- A task's own webhook_url, given when it was submitted.
CREATE TABLE IF NOT EXISTS task_webhooks (
  task_id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  url TEXT NOT NULL
);

-- The outbox: one row per (event, target), its id the webhook-id of every attempt. `state` is
-- pending, delivered or failed (gave up); `next_at` (ms) is when the next attempt is due.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  endpoint_id TEXT NOT NULL,
  url TEXT NOT NULL,
  event_type TEXT NOT NULL,
  payload TEXT NOT NULL,
  state TEXT NOT NULL,
  attempts BIGINT NOT NULL DEFAULT 0,
  next_at BIGINT NOT NULL,
  created_at BIGINT NOT NULL,
  last_at BIGINT,
  last_status BIGINT,
  last_error TEXT
);

CREATE INDEX IF NOT EXISTS idx_webhook_deliveries_due ON webhook_deliveries (state, next_at);
CREATE INDEX IF NOT EXISTS idx_webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id);

-- Every attempt of a delivery, for GET /api/webhooks/{id}/deliveries.
CREATE TABLE IF NOT EXISTS webhook_attempts (
  delivery_id TEXT NOT NULL,
  attempt BIGINT NOT NULL,
  at BIGINT NOT NULL,
  status BIGINT,
  error TEXT,
  PRIMARY KEY (delivery_id, attempt)
);

-- How far the webhook scanner has read the tasks table (tasks.txid, see 0004), so a task that
-- finished while no edge ran still gets its events.
CREATE TABLE IF NOT EXISTS webhook_cursor (
  name TEXT PRIMARY KEY,
  position BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_batch_lines_task ON batch_lines (task_id);

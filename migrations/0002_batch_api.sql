-- The OpenAI Batch API: files, batches and the lines of each batch. Cloudflare D1 format.

-- An uploaded (purpose 'batch') or produced (purpose 'batch_output') file of a tenant. Its
-- content is in file_parts, cut into parts of at most 1 MiB so no row outgrows D1's limit.
CREATE TABLE IF NOT EXISTS files (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  purpose TEXT NOT NULL,
  filename TEXT NOT NULL,
  bytes INTEGER NOT NULL,
  lines INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER
);

CREATE INDEX IF NOT EXISTS idx_files_tenant ON files (tenant, created_at);

CREATE TABLE IF NOT EXISTS file_parts (
  file_id TEXT NOT NULL,
  part INTEGER NOT NULL,
  data BLOB NOT NULL,
  PRIMARY KEY (file_id, part)
);

-- One row per OpenAI batch. `doc` is the batch object's JSON as clients see it (status,
-- timestamps in Unix seconds, request_counts, errors, usage...); `status` and `seq` are copied
-- out of it for the runner's queries and for cursor pagination.
CREATE TABLE IF NOT EXISTS openai_batches (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  seq INTEGER NOT NULL,
  status TEXT NOT NULL,
  submitted INTEGER NOT NULL DEFAULT 0,
  doc TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_openai_batches_tenant ON openai_batches (tenant, seq);
CREATE INDEX IF NOT EXISTS idx_openai_batches_status ON openai_batches (status);

-- The lines of a validated batch, each with the id of the task that runs it (derived from the
-- batch id and the line number, so a line is never queued as two tasks).
CREATE TABLE IF NOT EXISTS batch_lines (
  batch_id TEXT NOT NULL,
  line INTEGER NOT NULL,
  custom_id TEXT NOT NULL,
  task_id TEXT NOT NULL,
  request TEXT NOT NULL,
  PRIMARY KEY (batch_id, line)
);

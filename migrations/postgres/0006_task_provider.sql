-- Twin of ../0006_task_provider.sql: who answered a task (result.provider, result.model) and
-- every provider call it made (a JSON array), for GET /api/tasks/{id}.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS provider TEXT;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS provider_model TEXT;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS tries TEXT;

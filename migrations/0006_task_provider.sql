-- Several providers per model (PROVIDERS_FILE): who answered a task (the provider's name and
-- the model it was asked for, result.provider and result.model) and every provider call it
-- made (a JSON array: provider, route model, processor, start, end, status, error), listed by
-- GET /api/tasks/{id}. NULL on rows from before, and on tasks that never reached a provider.
ALTER TABLE tasks ADD COLUMN provider TEXT;
ALTER TABLE tasks ADD COLUMN provider_model TEXT;
ALTER TABLE tasks ADD COLUMN tries TEXT;

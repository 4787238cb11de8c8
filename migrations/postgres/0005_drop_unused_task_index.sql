-- No query reads tasks by batch_id (the Batch API joins on tasks.id, webhooks walk the rowid,
-- dead letters use idx_tasks_tenant_status): its index only made every task write dearer.
DROP INDEX IF EXISTS idx_tasks_batch;

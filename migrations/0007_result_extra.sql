-- What a task's result holds beyond its own columns (JSON): tool calls, logprobs, refusal,
-- system fingerprint, every choice when n > 1, usage details (shared/tasks.py stored_extras).
ALTER TABLE tasks ADD COLUMN result_extra TEXT;

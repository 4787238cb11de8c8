#!lua flags=allow-oom
-- allow-oom: it ends a task (a status, one event, a dead letter), as complete.lua does.
-- Fail a task whose deadline has passed while it still waits (queued or batched, never sent):
-- it ends 'failed' with code deadline_exceeded, is dead-lettered like any failure, and no
-- processor will call the provider for it (begin.lua finds it terminal). A running task is its
-- holder's to end; it only leaves the deadline index here.
-- KEYS[1] task hash, KEYS[2] events stream, KEYS[3] deadline index, KEYS[4] dead letters,
-- KEYS[5] stats hash
-- ARGV[1] task id, ARGV[2] now (ms), ARGV[3] retention (s), ARGV[4] error JSON,
-- ARGV[5] terminal event data, ARGV[6] key prefix of the tenants' active sets
-- Returns 'expired' | 'running' | 'gone' (finished or forgotten)
redis.call('ZREM', KEYS[3], ARGV[1])
local st = redis.call('HGET', KEYS[1], 'status')
if st == RUNNING then return 'running' end
if st ~= QUEUED and st ~= BATCHED then return 'gone' end
redis.call('HSET', KEYS[1], 'status', FAILED, 'error', ARGV[4], 'completed_at', ARGV[2])
redis.call('XADD', KEYS[2], '*', 'e', TERMINAL_EVENT[FAILED], 'd', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
local tenant = redis.call('HGET', KEYS[1], 'tenant')
if tenant then redis.call('ZREM', ARGV[6] .. tenant, ARGV[1]) end
redis.call('HINCRBY', KEYS[5], 'tasks_' .. FAILED, 1)
return 'expired'

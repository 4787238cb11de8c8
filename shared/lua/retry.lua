#!lua
-- Refused whole over maxmemory (shebang without allow-oom, checked before the first command):
-- a re-queued task is new work. The edge answers 503 queue_full.
-- Re-queue a failed (dead-lettered) task under the same id. When Redis has already forgotten
-- the task, it is rebuilt from its store row (passed in ARGV). The fence counter carries on, so
-- the new run's row replaces the failed one.
-- KEYS[1] task hash, KEYS[2] events stream, KEYS[3] tasks stream, KEYS[4] dead letters
-- ARGV[1] tenant, ARGV[2] now (ms), ARGV[3] task TTL (s), ARGV[4] task id,
-- ARGV[5] request JSON ('' when Redis should know the task), ARGV[6] model,
-- ARGV[7] created_at (ms), ARGV[8] fence, ARGV[9] key prefix of the tenants' active sets
-- Returns 'requeued' | 'missing' | 'not_failed'
local st = redis.call('HGET', KEYS[1], 'status')
if st then
  if redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[1] then return 'missing' end
  if st ~= FAILED then return 'not_failed' end
else
  if ARGV[5] == '' then return 'missing' end
  redis.call('HSET', KEYS[1], 'id', ARGV[4], 'tenant', ARGV[1], 'request', ARGV[5],
    'model', ARGV[6], 'created_at', ARGV[7], 'fence', ARGV[8])
end
redis.call('HDEL', KEYS[1], 'result', 'error', 'completed_at', 'started_at', 'batch_id',
  'processor', 'cancel', 'open')
redis.call('HSET', KEYS[1], 'status', QUEUED, 'attempts', '0', 'retried_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[2], '*', 'e', EV_STATUS, 'd', '{"status":"' .. QUEUED .. '","retried":true}')
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[4], ARGV[4])
redis.call('ZADD', ARGV[9] .. ARGV[1], ARGV[2], ARGV[4])  -- active again: counts against its limit
redis.call('XADD', KEYS[3], '*', 'id', ARGV[4])
return 'requeued'

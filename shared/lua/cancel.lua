#!lua
-- Refused whole over maxmemory (shebang without allow-oom, checked before the first command):
-- it writes to the task. The edge answers 503 queue_full; the client asks again later.
-- Ask for a task's cancellation. A task not yet running is cancelled here and now (a processor
-- that later finds it skips the provider); a running one is flagged and its holder told.
-- KEYS[1] task hash, KEYS[2] events stream, KEYS[3] the tenant's active set
-- ARGV[1] tenant, ARGV[2] now (ms), ARGV[3] cancel channel, ARGV[4] task id,
-- ARGV[5] the task's error JSON once cancelled
-- Returns {'missing'} | {'terminal', status} | {'now'} (cancelled here) | {'flagged'} (running:
-- its holder was told)
local st = redis.call('HGET', KEYS[1], 'status')
if not st or redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[1] then return {'missing'} end
if TERMINAL[st] then return {'terminal', st} end
if st == RUNNING then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return {'flagged'}
end
redis.call('HSET', KEYS[1], 'status', CANCELLED, 'completed_at', ARGV[2], 'error', ARGV[5])
redis.call('XADD', KEYS[2], '*', 'e', TERMINAL_EVENT[CANCELLED],
  'd', '{"status":"' .. CANCELLED .. '"}')
-- Terminal now: it no longer counts against the tenant's cap on active tasks.
redis.call('ZREM', KEYS[3], ARGV[4])
return {'now'}

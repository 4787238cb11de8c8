#!lua
-- Refused whole over maxmemory (shebang without allow-oom, checked before the first command):
-- it writes to the task. The edge answers 503 queue_full; the client asks again later.
-- Ask for a task's cancellation. A task not yet running is cancelled here and now (a processor
-- that later finds it skips the provider); a running one is flagged and its holder told.
-- KEYS[1] task hash, KEYS[2] events stream, KEYS[3] the tenant's active set
-- ARGV[1] tenant, ARGV[2] now (ms), ARGV[3] cancel channel, ARGV[4] task id, ARGV[5] retention (s)
-- Returns 'missing' | 'terminal' | 'cancelled' | 'cancelling'
local st = redis.call('HGET', KEYS[1], 'status')
if not st or redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[1] then return 'missing' end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return 'terminal' end
if st == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 'cancelling'
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'completed_at', ARGV[2],
  'error', '{"code":"cancelled","message":"cancelled by the client"}')
redis.call('XADD', KEYS[2], '*', 'e', 'cancelled', 'd', '{"status":"cancelled"}')
-- Terminal now: it no longer counts against the tenant's cap on active tasks.
redis.call('ZREM', KEYS[3], ARGV[4])
return 'cancelled'

-- A processor takes a task: lease (SET PX with a token) plus a fence number from the task's
-- counter. The fence orders every holder the task ever had; the store keeps only the highest.
-- Re-entrant for the same token, so a holder that lost its Redis connection mid-task takes its
-- own lease back at once instead of waiting for it to expire.
-- KEYS[1] task hash, KEYS[2] lease, KEYS[3] events stream
-- ARGV[1] token, ARGV[2] lease TTL (ms), ARGV[3] now (ms), ARGV[4] processor name
-- Returns {'ok', fence, attempts, cancel, previous status} | {'terminal', status} | {'busy'}
--       | {'missing'}
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing'} end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return {'terminal', st} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {'busy'} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
if st ~= 'running' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[3])
  redis.call('XADD', KEYS[3], '*', 'e', 'status', 'd', '{"status":"running"}')
end
redis.call('HSET', KEYS[1], 'processor', ARGV[4])
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
return {'ok', fence, attempts, redis.call('HGET', KEYS[1], 'cancel') or '', st}

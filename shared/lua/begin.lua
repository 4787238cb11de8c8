#!lua
-- Refused whole over maxmemory (shebang without allow-oom, checked before the first command):
-- a started task grows (lease, events, then its result). The processor waits, keeping the batch.
-- A processor takes a task: lease (SET PX with a token) plus a fence number from the task's
-- counter. The fence orders every holder the task ever had; the store keeps only the highest.
-- Re-entrant for the same token, so a holder that lost its Redis connection mid-task takes its
-- own lease back at once instead of waiting for it to expire. A task never attempted before
-- has its first attempt counted here too, saving a round trip on the common path.
-- KEYS[1] task hash, KEYS[2] lease, KEYS[3] events stream
-- ARGV[1] token, ARGV[2] lease TTL (ms), ARGV[3] now (ms), ARGV[4] processor name
-- Returns {'ok', fence, attempts, cancel, counted ('1' when this call counted attempt 1),
--          the task hash as field, value, ...} | {'terminal', status} | {'busy'} | {'missing'}
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing'} end
if TERMINAL[st] then return {'terminal', st} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {'busy'} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
if st ~= RUNNING then
  redis.call('HSET', KEYS[1], 'status', RUNNING, 'started_at', ARGV[3])
  redis.call('XADD', KEYS[3], '*', 'e', EV_STATUS, 'd', '{"status":"' .. RUNNING .. '"}')
end
redis.call('HSET', KEYS[1], 'processor', ARGV[4])
local cancel = redis.call('HGET', KEYS[1], 'cancel') or ''
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
local counted = ''
if attempts == 0 and cancel == '' then
  attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  counted = '1'
end
local reply = {'ok', fence, attempts, cancel, counted}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do reply[#reply + 1] = v end
return reply

#!lua
-- Refused whole over maxmemory (shebang without allow-oom, checked before the first command):
-- a started task grows (lease, events, then its result). The processor waits, keeping the batch.
-- A processor takes a task: lease (SET PX with a token) plus a fence number from the task's
-- counter. The fence orders every holder the task ever had; the store keeps only the highest.
-- Re-entrant for the same token, so a holder that lost its Redis connection mid-task takes its
-- own lease back at once instead of waiting for it to expire. A task never attempted before
-- has its first attempt counted here too, saving a round trip on the common path.
-- One HMGET reads all it needs and one HSET writes all it changes: each redis.call and each
-- field crossing into Lua and back costs redis-server more than the commands themselves.
-- KEYS[1] task hash, KEYS[2] lease, KEYS[3] events stream
-- ARGV[1] token, ARGV[2] lease TTL (ms), ARGV[3] now (ms), ARGV[4] processor name
-- Returns {'ok', fence, attempts, cancel, counted ('1' when this call counted attempt 1),
--          {the values of the fields a holder uses, in the order of steps.BEGUN_FIELDS:
--           id, tenant, model, request, created_at, started_at, batch_id, idem_key,
--           idem_hash, requeues, traceparent; false for a field the hash lacks}}
--       | {'terminal', status} | {'busy'} | {'missing'}
local f = redis.call('HMGET', KEYS[1], 'status', 'fence', 'cancel', 'attempts', 'id', 'tenant',
  'model', 'request', 'created_at', 'started_at', 'batch_id', 'idem_key', 'idem_hash',
  'requeues', 'traceparent')
local st = f[1]
if not st then return {'missing'} end
if TERMINAL[st] then return {'terminal', st} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {'busy'} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local fence = (tonumber(f[2]) or 0) + 1
local cancel = f[3] or ''
local attempts = tonumber(f[4] or '0')
local counted = ''
if attempts == 0 and cancel == '' then
  attempts = 1
  counted = '1'
end
local set = {'HSET', KEYS[1], 'fence', fence, 'processor', ARGV[4]}
if counted == '1' then
  set[7], set[8] = 'attempts', attempts
end
if st ~= RUNNING then
  f[10] = ARGV[3]
  local n = #set
  set[n + 1], set[n + 2], set[n + 3], set[n + 4] = 'status', RUNNING, 'started_at', ARGV[3]
end
redis.call(unpack(set))
if st ~= RUNNING then
  redis.call('XADD', KEYS[3], '*', 'e', EV_STATUS, 'd', '{"status":"' .. RUNNING .. '"}')
end
return {'ok', fence, attempts, cancel, counted,
  {f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12], f[13], f[14], f[15]}}

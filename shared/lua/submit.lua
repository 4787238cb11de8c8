#!lua
-- Refused whole over maxmemory (shebang without allow-oom, checked before the first command):
-- a new task is new memory. The edge answers 503 queue_full.
-- Store a new task and queue it, in one step: a 202 is only ever sent for a stored task. The
-- tenant's limits are checked and counted in the same step, so however many edge replicas run,
-- a tenant never gets more than its share, and a refused request leaves nothing behind.
-- KEYS[1] task hash, KEYS[2] task events stream, KEYS[3] tasks stream, KEYS[4] idempotency key,
-- KEYS[5] the tenant's counter for the current rate window, KEYS[6] the tenant's active set
-- ARGV[1] task id, ARGV[2] tenant, ARGV[3] request JSON, ARGV[4] model, ARGV[5] now (ms),
-- ARGV[6] body hash ('' when no Idempotency-Key), ARGV[7] idempotency TTL (s),
-- ARGV[8] data of the first status event, ARGV[9] task TTL while not finished (s),
-- ARGV[10] submissions allowed per rate window (0: no limit), ARGV[11] rate window (ms),
-- ARGV[12] tasks allowed queued or running at once (0: no limit), ARGV[13] the Idempotency-Key
-- (kept in the task hash: its holder writes it to the store with the task's row, so the
-- durable record exists even when the edge could not write it),
-- ARGV[14] W3C traceparent of the edge's submit span ('' when tracing is off),
-- ARGV[15] priority (lower runs sooner), ARGV[16] estimated tokens (the fair share's cost)
-- Returns {'created', id, submissions counted in this rate window (0: no rate limit)}
--       | {'existing', id} | {'conflict', id}
--       | {'rate_limited', seconds until the window resets} | {'too_many_active', '1'}
local now = tonumber(ARGV[5])
if ARGV[6] ~= '' then
  -- A replay of an accepted request is not a new submission: answer it before any limit.
  local prev = redis.call('GET', KEYS[4])
  if prev then
    local sep = string.find(prev, ' ', 1, true)
    local prev_id = string.sub(prev, 1, sep - 1)
    if string.sub(prev, sep + 1) == ARGV[6] then return {'existing', prev_id} end
    return {'conflict', prev_id}
  end
end

-- Rate: a fixed window counter; the key names the window, so a new window starts at zero.
local rate, window = tonumber(ARGV[10]), tonumber(ARGV[11])
local window_left = window - (now % window)
if rate > 0 and tonumber(redis.call('GET', KEYS[5]) or '0') >= rate then
  return {'rate_limited', tostring(math.max(1, math.ceil(window_left / 1000)))}
end

-- Active cap: members are scored by submit time. One older than the task TTL belongs to a task
-- whose hash expired without ever finishing (nothing will remove it), so it is dropped here.
local cap = tonumber(ARGV[12])
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', '(' .. (now - tonumber(ARGV[9]) * 1000))
if cap > 0 and redis.call('ZCARD', KEYS[6]) >= cap then
  return {'too_many_active', '1'}
end

if ARGV[6] ~= '' then
  redis.call('SET', KEYS[4], ARGV[1] .. ' ' .. ARGV[6], 'EX', ARGV[7])
end
local used = 0
if rate > 0 then
  used = redis.call('INCR', KEYS[5])
  redis.call('PEXPIRE', KEYS[5], window_left + 1000)
end
redis.call('ZADD', KEYS[6], now, ARGV[1])
redis.call('EXPIRE', KEYS[6], ARGV[9])
-- One HSET for all the task's fields: each redis.call costs more than its command.
local task = {'HSET', KEYS[1], 'id', ARGV[1], 'tenant', ARGV[2], 'status', QUEUED,
  'request', ARGV[3], 'model', ARGV[4], 'created_at', ARGV[5], 'attempts', '0', 'fence', '0',
  'priority', ARGV[15], 'cost', ARGV[16]}
if ARGV[6] ~= '' then
  task[23], task[24], task[25], task[26] = 'idem_key', ARGV[13], 'idem_hash', ARGV[6]
end
if ARGV[14] ~= '' then
  local n = #task
  task[n + 1], task[n + 2] = 'traceparent', ARGV[14]
end
redis.call(unpack(task))
redis.call('EXPIRE', KEYS[1], ARGV[9])
redis.call('XADD', KEYS[2], '*', 'e', EV_STATUS, 'd', ARGV[8])
redis.call('EXPIRE', KEYS[2], ARGV[9])
redis.call('XADD', KEYS[3], '*', 'id', ARGV[1])
return {'created', ARGV[1], used}

#!lua
-- Refused whole over maxmemory: a note, not a step of the task (the runner goes on without it).
-- Note one ended provider call of a task (GET /api/tasks/{id} lists them, with the row's): its
-- provider, route model, processor, start, end, status and error, appended to the task's
-- 'tries' field (a JSON array) while our lease holds. At most MAX_BYTES of them: a task that
-- fails for ever does not grow its hash for ever (later calls are left out).
-- KEYS[1] task hash, KEYS[2] task lease
-- ARGV[1] lease token, ARGV[2] the call, a JSON object
-- Returns 1 when noted, 0 when the lease is not ours (or the list is full)
local MAX_BYTES = 32768
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local cur = redis.call('HGET', KEYS[1], 'tries')
if not cur then
  cur = '[' .. ARGV[2] .. ']'
elseif #cur + #ARGV[2] > MAX_BYTES then
  return 0
else
  cur = string.sub(cur, 1, -2) .. ',' .. ARGV[2] .. ']'
end
redis.call('HSET', KEYS[1], 'tries', cur)
return 1

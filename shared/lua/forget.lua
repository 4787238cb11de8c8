#!lua flags=allow-oom
-- allow-oom: it only deletes.
-- Forget a finished task in Redis, for good (DELETE /v1/responses/{id}): its hash, its events,
-- its place in the dead letters and the deadlines index, and its Idempotency-Key when that
-- still names it, so nothing in Redis serves the task again. Only a terminal task of this
-- tenant: a queued or running one has a holder that would write it again (the edge cancels it
-- first, then asks again). A terminal task's row is in the store already (complete.lua runs
-- after it), or, cancelled before it ran, gets none once its hash is gone (begin.lua finds it
-- missing); the edge then replaces the row with a tombstone.
-- KEYS[1] task hash, KEYS[2] events stream, KEYS[3] dead letters, KEYS[4] deadlines
-- ARGV[1] tenant, ARGV[2] task id, ARGV[3] key prefix of the tenant's Idempotency-Keys
-- (Keys.idempotency(tenant, ""); the key itself is read from the task hash)
-- Returns {'missing'} (not in Redis, or another tenant's) | {'active', status} | {'forgotten'}
local st = redis.call('HGET', KEYS[1], 'status')
if not st or redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[1] then return {'missing'} end
if not TERMINAL[st] then return {'active', st} end
local idem = redis.call('HGET', KEYS[1], 'idem_key')
if idem and idem ~= '' then
  local key = ARGV[3] .. idem
  local held = redis.call('GET', key)
  if held and string.sub(held, 1, #ARGV[2] + 1) == ARGV[2] .. ' ' then
    redis.call('DEL', key)
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
return {'forgotten'}

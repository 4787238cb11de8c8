#!lua flags=allow-oom
-- allow-oom: the row is in the store already; this ends the lease, frees the tenant's slot and
-- starts the retention clock after which the task's memory is freed (README, "Redis memory").
-- Mark a task terminal in Redis, after its row is in the store: status, result, terminal event,
-- lease released, retention set, and the task off its tenant's active set. Only the lease
-- holder may do it.
-- The last task of a batch to finish acknowledges the batch's entry here too, after the task is
-- terminal: the order of the final steps (row, terminal, ack) in one round trip.
-- KEYS[1] task hash, KEYS[2] lease, KEYS[3] events stream, KEYS[4] dead letters, KEYS[5] stats,
-- KEYS[6] batches stream
-- ARGV[1] token, ARGV[2] status, ARGV[3] result JSON, ARGV[4] error JSON, ARGV[5] now (ms),
-- ARGV[6] retention (s), ARGV[7] terminal event type, ARGV[8] terminal event data, ARGV[9] id,
-- ARGV[10] key prefix of the tenants' active sets (Keys.tenant_active(""); the tenant is read
-- from the task hash, as batch.lua builds task keys from a prefix), ARGV[11] processors' group,
-- ARGV[12] the batch entry to acknowledge ('' unless every other task of the batch finished),
-- ARGV[13] the task's provider calls, a JSON array ('' to leave the hash's as they are),
-- ARGV[14..] pairs of (event type, JSON data): the last deltas, not sent yet, appended before
-- the terminal event (what emit.lua would have done one round trip earlier, under the same
-- lease check)
-- Returns 1, or 0 when the lease is lost.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
for i = 14, #ARGV, 2 do
  redis.call('XADD', KEYS[3], '*', 'e', ARGV[i], 'd', ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'result', ARGV[3], 'error', ARGV[4],
  'completed_at', ARGV[5])
redis.call('HDEL', KEYS[1], 'cancel')
if ARGV[13] ~= '' then redis.call('HSET', KEYS[1], 'tries', ARGV[13]) end
redis.call('XADD', KEYS[3], '*', 'e', ARGV[7], 'd', ARGV[8])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[3], ARGV[6])
if ARGV[2] == FAILED then
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[9])
else
  redis.call('ZREM', KEYS[4], ARGV[9])
end
local tenant = redis.call('HGET', KEYS[1], 'tenant')
if tenant and ARGV[10] then
  redis.call('ZREM', ARGV[10] .. tenant, ARGV[9])
end
redis.call('HINCRBY', KEYS[5], 'tasks_' .. ARGV[2], 1)
if ARGV[12] ~= '' then
  redis.call('XACK', KEYS[6], ARGV[11], ARGV[12])
end
return 1

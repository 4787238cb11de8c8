#!lua flags=allow-oom
-- allow-oom: it moves a task back to the queue (one small stream entry); refused, the task
-- would sit in a processor that cannot call the provider, holding a slot.
-- A rate-limited task goes back to waiting in the queue, not in its processor: release its
-- lease (compare-and-delete), mark it queued, uncount the refused call (a wait is no attempt),
-- tell clients (a reset if it had streamed) and queue it for the coordinators again, where it
-- takes its place in its tenant's line by priority and age. One step, so it is either still
-- held or queued, never neither.
-- KEYS[1] task hash, KEYS[2] lease, KEYS[3] task events, KEYS[4] tasks stream
-- ARGV[1] lease token, ARGV[2] '1' when the refused call had streamed, ARGV[3] task id
-- Returns 1, or 0 when the lease is no longer ours (the new holder has it).
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if attempts > 0 then redis.call('HSET', KEYS[1], 'attempts', attempts - 1) end
redis.call('HINCRBY', KEYS[1], 'requeues', 1)  -- the next call is a retry, its wait not new
redis.call('HSET', KEYS[1], 'status', QUEUED)
redis.call('HDEL', KEYS[1], 'batch_id', 'processor', 'waiting_for', 'waiting_until')
if ARGV[2] == '1' then
  redis.call('XADD', KEYS[3], '*', 'e', EV_RESET, 'd', '{"rate_limited":true}')
end
redis.call('XADD', KEYS[3], '*', 'e', EV_STATUS,
  'd', '{"status":"' .. QUEUED .. '","rate_limited":true}')
redis.call('XADD', KEYS[4], '*', 'id', ARGV[3])
return 1

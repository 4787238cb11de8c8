#!lua flags=allow-oom
-- allow-oom: a draining processor hands its unstarted tasks back (one small stream entry)
-- rather than leave them waiting for their lease to expire.
-- Hand unfinished tasks of a batch back to the queue at once (graceful drain): queue a new
-- batch entry with those tasks and acknowledge the old one, in one step. The leases were
-- already released by their holders (compare-and-delete), so another processor starts now.
-- KEYS[1] batches stream, KEYS[2] backlog counter, KEYS[3] stats hash
-- ARGV[1] processors' group, ARGV[2] old entry id, ARGV[3] batch id, ARGV[4] now (ms),
-- ARGV[5..] task ids to hand off
-- Returns the number of tasks handed off.
local n = #ARGV - 4
if n > 0 then
  local ids = {}
  for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
  redis.call('XADD', KEYS[1], '*', 'b', ARGV[3], 't', table.concat(ids, ','), 'r', 'handoff',
    'at', ARGV[4])
  redis.call('INCRBY', KEYS[2], n)
  redis.call('HINCRBY', KEYS[3], 'handoffs', 1)
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return n

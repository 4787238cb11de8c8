#!lua flags=allow-oom
-- allow-oom: a running task's deltas; refusing them mid-stream would throw a paid answer away.
-- Work in flight finishes over maxmemory, by a bounded amount (README, "Redis memory").
-- Append deltas to a task's event stream, only while we hold its lease: a paused holder that
-- wakes up after losing it must not interleave stale tokens with the new holder's.
-- KEYS[1] lease, KEYS[2] events stream
-- ARGV[1] token, ARGV[2..] pairs of (event type, JSON data)
-- Returns 1, or 0 when the lease is lost.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do
  redis.call('XADD', KEYS[2], '*', 'e', ARGV[i], 'd', ARGV[i + 1])
end
return 1

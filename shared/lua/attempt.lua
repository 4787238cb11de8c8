#!lua flags=allow-oom
-- allow-oom: a running task may call the provider again (at most MAX_ATTEMPTS); work in flight
-- finishes over maxmemory, by a bounded amount (README, "Redis memory").
-- Count one call to the provider. Every attempt after the first tells clients to discard what
-- they have received ('reset'), since the answer starts again from its first token.
-- KEYS[1] task hash, KEYS[2] lease, KEYS[3] events stream
-- ARGV[1] token
-- Returns the attempt number, or -1 when the lease is no longer ours.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if n > 1 then
  redis.call('XADD', KEYS[3], '*', 'e', EV_RESET, 'd', '{"attempt":' .. n .. '}')
end
return n

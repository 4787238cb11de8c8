#!lua flags=allow-oom
-- allow-oom: it changes a TTL, no growth; a lease let lapse under OOM would hand a running task
-- to another holder.
-- Extend a lease we hold (compare-and-expire, redis-py Lock's extend with replace_ttl).
-- KEYS[1] lease; ARGV[1] token, ARGV[2] TTL (ms). Returns 1, or 0 when the lease is lost.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])

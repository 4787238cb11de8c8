#!lua flags=allow-oom
-- allow-oom: a coordinator overwrites its own score (no growth); refused, a coordinator waiting
-- out a full Redis would look dead to its healthcheck and to /api/async-status.
-- A coordinator's heartbeat, and the processors whose heartbeat stopped long ago.
-- KEYS[1] coordinators' heartbeat zset, KEYS[2] processors' heartbeat zset
-- ARGV[1] coordinator name, ARGV[2] its heartbeat expiry (ms), ARGV[3] forget expiries before (ms)
-- Returns the names of the processors whose heartbeat expired before ARGV[3].
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
return redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])

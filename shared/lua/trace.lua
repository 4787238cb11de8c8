#!lua flags=allow-oom
-- allow-oom: it overwrites the traceparent the edge wrote with one of the same length (no
-- growth); refused, a coordinator waiting out a full Redis would stall on a tracing nicety.
-- Hand a task's trace on: set its `traceparent` to the span of the service now holding it (the
-- coordinator's batch span), only if the task still exists, so a cancelled or expired task is
-- never recreated as a stray hash without a TTL. Runs only when tracing is on.
-- KEYS[1] task hash
-- ARGV[1] the W3C traceparent
-- Returns 1 when set, 0 when the task is gone
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'traceparent', ARGV[1])
return 1

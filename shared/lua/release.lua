#!lua flags=allow-oom
-- allow-oom: it deletes, which frees memory.
-- Release a lock or lease we hold: compare-and-delete, never a plain DEL.
-- KEYS[1] lock; ARGV[1] token. Returns 1 when released, 0 when it was not ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])

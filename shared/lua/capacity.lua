#!lua flags=allow-oom
-- allow-oom: a processor overwrites its own fields (no growth); refused, a processor waiting
-- out a full Redis would look dead.
-- A processor reports its free slots, the provider room its governor sees (batch.lua flushes
-- no more than that, cluster-wide) and the tasks it just took off the backlog; when it has
-- room and tasks wait, it wakes the coordinators so they flush at once.
-- KEYS[1] free slots hash, KEYS[2] heartbeat zset, KEYS[3] backlog counter, KEYS[4] waiting
-- count, KEYS[5] in-flight hash, KEYS[6] provider room hash
-- ARGV[1] processor name, ARGV[2] free slots, ARGV[3] heartbeat expiry (ms),
-- ARGV[4] tasks taken off the backlog, ARGV[5] channel, ARGV[6] tasks in flight,
-- ARGV[7] provider room
-- Returns the number of tasks waiting.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[6])
redis.call('HSET', KEYS[6], ARGV[1], ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local taken = tonumber(ARGV[4])
if taken > 0 and redis.call('DECRBY', KEYS[3], taken) < 0 then
  redis.call('SET', KEYS[3], 0)
end
local waiting = tonumber(redis.call('GET', KEYS[4]) or '0')
if waiting > 0 and tonumber(ARGV[2]) > 0 then
  redis.call('PUBLISH', ARGV[5], 'capacity')
end
return waiting

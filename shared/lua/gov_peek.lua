#!lua flags=allow-oom
-- allow-oom: it only drops expired slots, which frees memory.
-- Look at a provider's room without taking any: the calls in flight (expired leases dropped)
-- and the time until which nothing may be sent, for a processor deciding whether to claim.
-- KEYS[1] provider state hash, KEYS[2] slots zset
-- ARGV[1] now (ms), ARGV[2] operator's max concurrency (0: none), ARGV[3] initial window
-- Returns {limit, in flight, blocked until (ms, 0: not blocked)}
local now, opmax = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local s = redis.call('HMGET', KEYS[1], 'window', 'pause_until', 'req_rem', 'req_reset',
  'tok_rem', 'tok_reset')
local limit = math.max(1, math.floor(tonumber(s[1]) or tonumber(ARGV[3])))
if opmax > 0 and limit > opmax then limit = opmax end
local blocked = 0
local pause = tonumber(s[2]) or 0
if pause > now then blocked = pause end
for _, p in ipairs({{s[3], s[4]}, {s[5], s[6]}}) do
  local rem, reset = tonumber(p[1]), math.abs(tonumber(p[2]) or 0)  -- negative: capped
  if rem and rem <= 0 and reset > now and reset > blocked then blocked = reset end
end
return {limit, redis.call('ZCARD', KEYS[2]), blocked}

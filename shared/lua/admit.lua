#!lua
-- Refused whole over maxmemory (shebang without allow-oom, checked before the first command):
-- a full Redis takes no new call to the provider; the task waits, as the services do.
-- The provider governor admits one call, or says what to wait for. One step for every check
-- and the lease it takes, so however many processors ask at once, the provider never gets
-- more than its room: calls in flight under the window, requests and tokens under the
-- operator's per-window limits, and nothing while the provider asked for a pause or its own
-- x-ratelimit headers said its quota is spent until a reset (never past RETRY_AFTER_CAP_S:
-- a reset settle.lua capped is stored negative, see quota()).
-- A slot is a lease (a member of the slots zset scored by its expiry): a processor that dies
-- stops renewing it, and the next admission drops it.
-- KEYS[1] provider state hash, KEYS[2] slots zset, KEYS[3] requests counter of this window,
-- KEYS[4] requests counter of the previous window, KEYS[5] tokens counter of this window,
-- KEYS[6] tokens counter of the previous window, KEYS[7] task hash (its waiting_for is set)
-- ARGV[1] now (ms), ARGV[2] slot id ('<admitted ms>:<holder>'), ARGV[3] lease (ms),
-- ARGV[4] estimated tokens, ARGV[5] operator's max concurrency (0: learned only),
-- ARGV[6] requests per window (0: no limit), ARGV[7] tokens per window (0: no limit),
-- ARGV[8] window (ms), ARGV[9] initial concurrency window
-- Returns {'ok', limit, in flight (this call included)}
--       | {'wait', reason, until (ms; 0 = until a slot frees), limit, in flight}
--   reason: 'paused' | 'requests' | 'tokens' | 'capacity' | 'rpm' | 'tpm'
local state, slots = KEYS[1], KEYS[2]
local now, lease, est = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[4])
local opmax, rpm, tpm = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local W = tonumber(ARGV[8])

redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
local s = redis.call('HMGET', state, 'window', 'pause_until', 'req_rem', 'req_reset',
  'req_limit', 'tok_rem', 'tok_reset', 'tok_limit')
local window = tonumber(s[1])
if not window then
  window = tonumber(ARGV[9])
  redis.call('HSET', state, 'window', window, 'slow_start', '1')
end
local limit = math.max(1, math.floor(window))
if opmax > 0 and limit > opmax then limit = opmax end
local inflight = redis.call('ZCARD', slots)

local function wait(reason, untl)
  redis.call('HSET', KEYS[7], 'waiting_for', reason, 'waiting_until', untl)
  return {'wait', reason, tostring(untl), limit, inflight}
end

local pause = tonumber(s[2]) or 0
if pause > now then return wait('paused', pause) end

-- What the provider's own headers said is left. Once their reset time has passed, the quota
-- is back to the limit they announced (or unknown when they announced none).
local known = {}
local function quota(rem_f, reset_f, rem, reset, lim, need, reason)
  rem, reset = tonumber(rem), tonumber(reset)
  if reset == 0 then reset = nil end  -- a window admit opened: its reset is not known yet
  if reset and reset < 0 then
    -- A reset settle.lua capped (RETRY_AFTER_CAP_S): waited for until the cap; past it,
    -- not a reset at all (the quota does not come back): unknown, so with nothing in flight
    -- one call goes as a probe below, and its answer decides (settle.lua).
    reset = -reset
    if reset <= now then reset = nil end
  end
  if rem and reset and reset <= now then
    rem, reset = tonumber(lim), nil
    -- A new window, its reset not known yet: 'rolled' tells settle that the count kept from
    -- here on is this window's, so an answer cannot raise it (see settle.lua).
    if rem then
      redis.call('HSET', state, rem_f, rem, reset_f, 0)
    else
      redis.call('HDEL', state, rem_f, reset_f)
    end
  end
  known[rem_f] = rem
  if rem and rem < need then
    if reset then return {reason, reset} end
    -- Spent, with no reset known yet: the answers in flight will tell; with none in flight,
    -- one call goes as a probe.
    if inflight > 0 then return {reason, 0} end
  end
  return nil
end
local q = quota('req_rem', 'req_reset', s[3], s[4], s[5], 1, 'requests')
if q then return wait(q[1], q[2]) end
q = quota('tok_rem', 'tok_reset', s[6], s[7], s[8], est, 'tokens')
if q then return wait(q[1], q[2]) end

if inflight >= limit then return wait('capacity', 0) end

-- Operator limits per window: a sliding estimate from two fixed windows (the previous one
-- weighted by how much of it still overlaps the last W ms).
local idx = math.floor(now / W)
local frac = (now - idx * W) / W
local function over(cur_key, prev_key, cap, need)
  if cap <= 0 then return nil end
  need = math.min(need, cap)  -- a call bigger than the whole limit still goes, alone
  local cur = tonumber(redis.call('GET', cur_key) or '0')
  local prev = tonumber(redis.call('GET', prev_key) or '0')
  if prev * (1 - frac) + cur + need <= cap then return nil end
  if cur + need > cap or prev <= 0 then return (idx + 1) * W end
  -- the time at which the previous window's share has shrunk enough
  local f = 1 - (cap - cur - need) / prev
  return idx * W + math.ceil(f * W)
end
local untl = over(KEYS[3], KEYS[4], rpm, 1)
if untl then return wait('rpm', untl) end
untl = over(KEYS[5], KEYS[6], tpm, est)
if untl then return wait('tpm', untl) end

redis.call('ZADD', slots, now + lease, ARGV[2])
-- Counted only under an operator limit that reads them (the hot path stays short without).
if rpm > 0 then
  redis.call('INCR', KEYS[3])
  redis.call('PEXPIRE', KEYS[3], 2 * W + 1000)
end
if tpm > 0 then
  redis.call('INCRBY', KEYS[5], est)
  redis.call('PEXPIRE', KEYS[5], 2 * W + 1000)
end
if known['req_rem'] then redis.call('HINCRBY', state, 'req_rem', -1) end
if known['tok_rem'] then redis.call('HINCRBY', state, 'tok_rem', -est) end
redis.call('HDEL', KEYS[7], 'waiting_for', 'waiting_until')
return {'ok', limit, inflight + 1}

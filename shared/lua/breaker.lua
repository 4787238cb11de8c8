#!lua flags=allow-oom
-- allow-oom: one small hash per provider, rewritten in place; refused, a provider that fails
-- would go on getting every task's calls while Redis is full.
-- One provider's breaker, shared by every processor: consecutive failures that another
-- provider may not share (a refused connection, a timeout, a 5xx, a key refused) open it; open,
-- admission skips the provider until its cool-down ends, then one call goes through as a probe.
-- A failed probe opens it again for twice the cool-down (up to a cap); any success closes it.
-- One step per change, so two processors never both take the one probe.
-- KEYS[1] the provider's breaker hash
-- ARGV[1] op: 'probe' (may a call go now? takes the probe once the cool-down is over),
--         'unprobe' (the probe was taken but no call went: the next caller may take it),
--         'ok' (a call succeeded), 'fail' (a call failed in a way the breaker counts)
-- ARGV[2] now (ms), ARGV[3] failures in a row that open it (0: never opens),
-- ARGV[4] first cool-down (ms), ARGV[5] longest cool-down (ms),
-- ARGV[6] how long a taken probe is waited for before another may go (ms),
-- ARGV[7] the failure's message ('' unless 'fail')
-- Returns {state, failures in a row, open until (ms; half open: the probe's lease end),
--          granted (1: the call may go, 0: not)}
--   state: 'closed' | 'open' | 'half_open' (a probe is out)
local key = KEYS[1]
local op, now = ARGV[1], tonumber(ARGV[2])
local threshold, base, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local s = redis.call('HMGET', key, 'state', 'failures', 'open_until', 'cooldown', 'probe_until')
local state = s[1] or 'closed'
local failures = tonumber(s[2] or '0')
local open_until = tonumber(s[3] or '0')
local cooldown = tonumber(s[4] or '0')
local probe_until = tonumber(s[5] or '0')
local granted = 0

local function open(span)
  state, cooldown, open_until = 'open', span, now + span
  redis.call('HINCRBY', key, 'opened_total', 1)
  redis.call('HSET', key, 'opened_at', now)
end

if op == 'probe' then
  if state == 'closed' then
    granted = 1
  elseif (state == 'open' and now >= open_until) or (state == 'half_open' and now >= probe_until) then
    state, probe_until, granted = 'half_open', now + tonumber(ARGV[6]), 1
  end
elseif op == 'unprobe' then
  if state == 'half_open' then state, open_until = 'open', now end
elseif op == 'ok' then
  state, failures, cooldown, open_until = 'closed', 0, 0, 0
  redis.call('HSET', key, 'ok_at', now)
elseif op == 'fail' then
  failures = failures + 1
  redis.call('HSET', key, 'error', ARGV[7], 'error_at', now)
  if state == 'half_open' then
    open(math.min(cap, math.max(base, cooldown * 2)))
  elseif state == 'closed' and threshold > 0 and failures >= threshold then
    open(base)
  end
end
redis.call('HSET', key, 'state', state, 'failures', failures, 'open_until', open_until,
  'cooldown', cooldown, 'probe_until', probe_until)
-- Half open, the time given is the probe's end: no one else asks before it.
return {state, failures, state == 'half_open' and probe_until or open_until, granted}

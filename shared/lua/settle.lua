#!lua flags=allow-oom
-- allow-oom: it frees slots and corrects counters (next to no growth); refused, the slots would
-- stay taken until their leases end.
-- The provider governor learns from calls: each entry ends a call (frees its slot, corrects
-- its token estimate with the real usage, moves the AIMD window) and/or records what the
-- provider's x-ratelimit headers said. Entries from many calls go in one step, so a busy
-- processor pays one round trip for all the calls that ended while the last one was on its way.
-- AIMD: a rate limit (429, overloaded 503/529) halves the window once per overshoot (a call
-- admitted before the last decrease cannot cause another), never below 1, and remembers the
-- ceiling it happened at (the window, or the calls in flight then, when fewer). A refusal at
-- or past that ceiling, once slow start is over, is a probe that found the ceiling still
-- there: the window goes back to just below it, not to half (the provider did not shrink;
-- halving left it half idle while the window climbed back). A success grows the window, only
-- while the window was in use (so a quiet period does not inflate it): in slow start (until
-- the first refusal) to twice the calls the provider was seen to hold at once (a call taken
-- while n were in flight proves n), and by 1 per success while full: doubling per round of
-- first tokens even for long calls, which stay in flight after their first token (+1 alone
-- grew the window by the round's new calls only: +16 a round from 16); then back up towards
-- the last safe window (one below the refused one) by half the distance per round (BIC's
-- binary search: at least 1/window per success); past it, probing for more by 1 per
-- PROBE_ROUNDS rounds only, since every probe that is refused costs a 429 (and, with a
-- Retry-After, a pause for every processor).
-- KEYS[1] provider state hash, KEYS[2] slots zset, KEYS[3] tokens counter of this window,
-- KEYS[4] counter of rate-limited answers of this minute
-- ARGV[1] now (ms), ARGV[2] operator's max concurrency (0: none), ARGV[3] initial window,
-- ARGV[4] max backoff pause (ms) for repeated rate limits without Retry-After,
-- ARGV[5] '1' when a tokens-per-minute limit is set (token corrections count only then),
-- ARGV[6] the cap (ms) on anything the provider says to wait for (RETRY_AFTER_CAP_S),
-- ARGV[7..] entries, each a JSON object:
--   {"slot": id, "outcome": "ok"|"limited"|"other", "tokens": correction,
--    "pause_until": ms from Retry-After (0: none), "accepted": 1 when its accept was sent}
--   and/or {"accept": id, "te": its estimated tokens, "n": calls in flight when it was
--   admitted, its own included (0 or absent: unknown)} (the call's first token arrived: it
--   counts as a success now)
--   and/or {"h": {"rr": remaining requests, "rs": their reset (ms), "rl": request limit,
--                 "tr": remaining tokens, "ts": their reset (ms), "tl": token limit}}
-- Returns {limit, in flight, pause until (ms, 0: none)}
-- Nothing a provider sends stops calls for longer than the cap: a Retry-After pause ends by
-- now + cap, and a reset further than that is kept as minus (now + cap). Past it, admit.lua
-- lets one call go as a probe, and that call's answer decides: its headers replace the
-- capped reset, and a success that says nothing about the quota forgets it (see probing()).
-- A proxy's bug (x-ratelimit-reset-requests: 999999h) cost 114 years of silence before.
local state, slots = KEYS[1], KEYS[2]
local now, opmax = tonumber(ARGV[1]), tonumber(ARGV[2])
local cap_until = now + tonumber(ARGV[6])
-- The state is read once (one HMGET) and written back once, with the slots counted once and
-- then followed as entries free them: each redis.call costs more than its command.
local s = redis.call('HMGET', state, 'window', 'slow_start', 'decreased_at', 'pause_until',
  'refused_at', 'streak', 'req_reset', 'tok_reset', 'req_limit', 'tok_limit')
local window = tonumber(s[1] or ARGV[3])
local slow = s[2] ~= '0'
local dec_at = tonumber(s[3] or '0')
local pause = tonumber(s[4] or '0')
local cap = opmax > 0 and opmax or 100000
local w_max = tonumber(s[5] or '0')
local streak, streak_set = tonumber(s[6] or '0'), false
local inflight = redis.call('ZCARD', slots)
-- Was the window in use? Judged once, as the step begins: the calls of one round end (or get
-- their first token) together and are settled in one step; judged per entry, the first one's
-- growth would make the window look not full to the others, and slow start would grow by one
-- per step instead of doubling per round.
local was_full = inflight >= math.floor(window)
local PROBE_ROUNDS = 50
local resets = {req = tonumber(s[7]), tok = tonumber(s[8])}  -- followed as headers set them
local limits = {req = tonumber(s[9]), tok = tonumber(s[10])}  -- what the provider declared

-- n: the calls in flight when the call that succeeded was admitted (0: unknown). A call
-- admitted into a full window counts as the window in use, also when calls have ended since
-- (the processors' claims lag the room: judged by the calls in flight now alone, a round's
-- growth was lost whenever one call of it had not been admitted yet).
local function in_use(n)
  return was_full or inflight >= math.floor(window) or n >= math.floor(window)
end

local function grow(n, used)
  if slow then
    return math.max(used and window + 1 or window, 2 * n)
  end
  if not used then return window end
  local safe = w_max - 1
  if window < safe then return window + math.max(1, (safe - window) / 2) / window end
  return window + 1 / (window * PROBE_ROUNDS)
end

local function headers(h)
  for _, f in ipairs({{'rr', 'rs', 'rl', 'req'}, {'tr', 'ts', 'tl', 'tok'}}) do
    local rem, reset, lim = tonumber(h[f[1]]), tonumber(h[f[2]]), tonumber(h[f[3]])
    if lim then
      redis.call('HSET', state, f[4] .. '_limit', lim)
      limits[f[4]] = lim
    end
    if rem and reset and reset <= now then
      rem = nil  -- an answer from a window that has ended says nothing about this one
    end
    if reset and reset > cap_until then reset = -cap_until end  -- capped: a probe decides
    if rem then
      local c = redis.call('HMGET', state, f[4] .. '_rem', f[4] .. '_reset')
      local cur = tonumber(c[1])
      local cur_reset = tonumber(c[2])
      -- Calls admitted since this answer was sent already took from what it reports: in
      -- the window we know (its reset ahead), or in one admit.lua just opened (reset 0,
      -- not known yet; the provider counted this answer's call before the others).
      if cur and cur_reset and (cur_reset > now or cur_reset == 0) and cur < rem then
        rem = cur
      end
      redis.call('HSET', state, f[4] .. '_rem', rem, f[4] .. '_seen_at', now)
      if reset then
        redis.call('HSET', state, f[4] .. '_reset', reset)
        resets[f[4]] = reset
      elseif cur_reset and cur_reset < 0 then
        -- What is left, with no word on when: the capped reset is not this answer's.
        redis.call('HDEL', state, f[4] .. '_reset')
        resets[f[4]] = nil
      end
    end
  end
end

-- A success while a capped reset has passed (the probe's, or a call's from before) that
-- said nothing about that quota: the provider serves, so the quota is unknown again.
local function probing()
  for kind, reset in pairs(resets) do
    if reset < 0 and -reset <= now then
      redis.call('HDEL', state, kind .. '_rem', kind .. '_reset')
      resets[kind] = nil
    end
  end
end

-- A provider that declares its limits (x-ratelimit-limit-requests, -tokens) says how much it
-- takes: once it has taken a call, the window starts there, not at the slow start's guess, as
-- long as no refusal has taught it better (a refusal ends slow start). Requests per window
-- bound the calls in flight worth having; tokens per window do too, divided by the call's
-- estimated tokens. Raised only: below the window, the announced quota holds calls back.
local function declared(tokens)
  if not slow then return end
  local start = limits.req and limits.req > 0 and limits.req or nil
  if limits.tok and limits.tok > 0 and tokens and tokens > 0 then
    local by_tokens = math.max(1, math.floor(limits.tok / tokens))
    start = start and math.min(start, by_tokens) or by_tokens
  end
  if start and start > window then
    window = start
    was_full = inflight >= math.floor(window)  -- a lifted window is not in use yet
  end
end

local succeeded = false
for i = 7, #ARGV do
  local e = cjson.decode(ARGV[i])
  if e.h then headers(e.h) end
  if e.accept then
    -- The call's first token (or byte of an answer) arrived: the provider took it, and a rate
    -- limit comes before that. The window grows here, per time to first token, not once the
    -- whole answer is in (a round of 5-minute answers held the window still for 5 minutes).
    succeeded = true
    streak, streak_set = 0, true
    probing()
    local n = tonumber(e.n) or 0
    local admitted = tonumber(string.match(e.accept, '^(%d+):')) or now
    if not slow and admitted < dec_at and w_max > 1 and window > w_max - 1 then
      -- Taken in the overshoot that taught the ceiling, while the window is still above
      -- it (halved from far above, 16 to 8 for a provider taking 4): the overshoot's calls
      -- have told where the ceiling is; the window goes below it before it costs a second
      -- overshoot. An overshoot of which nothing is taken (a quota spent) says nothing.
      window = w_max - 1
    else
      window = grow(n, in_use(n))
    end
    declared(tonumber(e.te))
  end
  if e.slot then
    local full = inflight >= math.floor(window)
    inflight = inflight - redis.call('ZREM', slots, e.slot)
    if ARGV[5] == '1' and e.tokens and e.tokens ~= 0 then
      redis.call('INCRBY', KEYS[3], e.tokens)
    end
    local admitted = tonumber(string.match(e.slot, '^(%d+):')) or now
    if e.outcome == 'ok' then
      succeeded = true
      streak, streak_set = 0, true
      probing()
      if not e.accepted then  -- else: it grew at its first token
        local n = tonumber(e.n) or 0
        window = grow(n, full or in_use(n))
      end
    elseif e.outcome == 'limited' then
      redis.call('HINCRBY', state, 'limited_total', 1)
      redis.call('INCR', KEYS[4])
      redis.call('EXPIRE', KEYS[4], 120)
      redis.call('HSET', state, 'limited_at', now)
      streak, streak_set = streak + 1, true
      -- What the provider took: the calls still in flight once the refused ones are out, plus
      -- this one. The refusals of one overshoot arrive one by one and each lowers the estimate.
      local took = inflight + 1
      if admitted >= dec_at then
        if not slow and w_max > 0 and took >= w_max then
          -- Refused at or past the ceiling (a probe, or a window not yet down to it): the
          -- ceiling holds; back to just below it.
          window = math.max(1, math.min(window, w_max - 1))
        else
          w_max = math.min(window, took)
          window = math.max(1, window / 2)
        end
        slow, dec_at = false, now
      elseif w_max > took then
        w_max = took
      end
      local untl = math.min(tonumber(e.pause_until) or 0, cap_until)
      if untl <= now and streak >= 2 then
        -- Refused again with no word on how long to wait: back off, for every processor.
        untl = now + math.min(tonumber(ARGV[4]), 250 * 2 ^ (streak - 2))
      end
      if untl > pause then pause = untl end
    end
  end
end
window = math.min(window, cap)
local limit = math.max(1, math.floor(window))
if opmax > 0 and limit > opmax then limit = opmax end
local set = {'HSET', state, 'window', window, 'slow_start', slow and '1' or '0',
  'decreased_at', dec_at, 'pause_until', pause, 'refused_at', w_max, 'limit', limit}
if streak_set then
  set[#set + 1] = 'streak'
  set[#set + 1] = streak
end
if succeeded then
  set[#set + 1] = 'success_at'
  set[#set + 1] = now
end
redis.call(unpack(set))
return {limit, inflight, pause > now and pause or 0}

#!lua
-- Refused whole over maxmemory (shebang without allow-oom, checked before the first command):
-- it moves queued tasks on towards processors that could not begin them. The coordinator waits.
-- The batcher. Placed tasks wait in a fair waiting room until they are flushed into batches:
-- at once while processors (and the provider's governor) have spare room, when a full batch
-- is waiting and nothing says there is no room (seed mode: adaptive off), or when the timer
-- is due. One script, so every task lands in exactly one batch however many coordinators run
-- and whenever one of them dies. Mode 'flush' flushes all at once whatever the size and timer:
-- a coordinator's burst (tests) ends with it.
--
-- The waiting room: one sorted set per tenant, scored by submit time plus priority times the
-- aging step (lower runs sooner; a low priority is only a delay, so it still runs), and a
-- sorted set of the tenants with tasks waiting, scored by their virtual start time (start-time
-- fair queueing, the shares deficit round robin gives, picked in O(log n)): the tenant
-- furthest below its weighted share of estimated tokens goes next. A tenant coming back starts
-- at most one batch of its own ahead of the current virtual time, so idling never banks more.
--
-- KEYS[1] waiting count, KEYS[2] deadline, KEYS[3] batches stream, KEYS[4] tasks stream,
-- KEYS[5] batch sequence, KEYS[6] backlog counter, KEYS[7] processors' free slots hash,
-- KEYS[8] processors' heartbeat zset, KEYS[9] stats hash, KEYS[10] waiting tenants zset,
-- KEYS[11] fair-queueing state hash (v: virtual time, seq, f:<tenant>: a tenant's finish tag
-- while it has nothing waiting), KEYS[12] tenant weights hash, KEYS[13] processors' room hash
-- (what the provider's governor has room for, as each processor last saw it),
-- KEYS[14] the open batch list of earlier versions (its tasks are moved into the waiting room)
-- ARGV[1] mode: 'add' | 'timer' | 'idle' | 'flush', ARGV[2] now (ms), ARGV[3] batch size,
-- ARGV[4] batch timeout (ms), ARGV[5] adaptive '1'|'0', ARGV[6] coordinators' group,
-- ARGV[7] task key prefix, ARGV[8] events key prefix, ARGV[9] channel to announce a new timer,
-- ARGV[10] processors' group, ARGV[11] per-tenant waiting set key prefix,
-- ARGV[12] aging step: ms of waiting one priority step is worth,
-- ARGV[13..] pairs of (tasks stream entry id, task id) for 'add'
-- Returns {tasks waiting, deadline ms or 0, number of batches flushed}
local count_key, deadline_key, batches = KEYS[1], KEYS[2], KEYS[3]
local tenants, fair, weights = KEYS[10], KEYS[11], KEYS[12]
local now, size = tonumber(ARGV[2]), tonumber(ARGV[3])
local tprefix, wprefix, aging = ARGV[7], ARGV[11], tonumber(ARGV[12])
local flushed = 0

-- What the call reads more than once is read once and kept in locals; the waiting count, the
-- deadline, the virtual time and the sequence are written back once, at the end (one script:
-- nothing sees them in between). Each redis.call, and each value crossing between Redis and
-- Lua, costs redis-server more than the command itself.
local got = redis.call('MGET', count_key, deadline_key, KEYS[6])
local count = tonumber(got[1] or '0')
local deadline = tonumber(got[2] or '0')
local backlog = tonumber(got[3] or '0')  -- flushed, not yet taken by a processor
local fs = redis.call('HMGET', fair, 'v', 'seq')
local v, seq = tonumber(fs[1] or '0'), tonumber(fs[2] or '0')
local count0, deadline0, v0, seq0 = count, deadline, v, seq
local counted = false  -- the waiting count was written to (it is then kept, even at 0)
local weight = {}   -- tenant -> its share weight, once read
local lined = {}    -- tenant -> true while known to be in the waiting tenants set

-- Scores are written with exact digits: Lua's default number format keeps only 14.
local function num(x)
  return string.format('%.17g', x)
end

local function weight_of(tenant)
  local w = weight[tenant]
  if not w then
    w = math.max(tonumber(redis.call('HGET', weights, tenant) or '1') or 1, 0.001)
    weight[tenant] = w
  end
  return w
end

-- f: the task's tenant, priority, created_at and cost (HMGET, in that order).
local function enqueue(id, tkey, f)
  local tenant = f[1] or ''
  local rank = (tonumber(f[3]) or now) + (tonumber(f[2]) or 0) * aging
  -- Ties (the same millisecond) keep their arrival order.
  seq = seq + 1
  redis.call('ZADD', wprefix .. tenant, string.format('%.0f', rank * 1000 + seq % 1000), id)
  if not lined[tenant] and not redis.call('ZSCORE', tenants, tenant) then
    -- A tenant with nothing waiting until now may go up to one batch of its own ahead of the
    -- tenants being served (so a few tasks never wait behind another's burst), never more:
    -- what it did not use while idle is not saved up, and what it used before still counts.
    local cost = math.max(tonumber(f[4]) or 1, 1)
    local start = v - size * cost / weight_of(tenant)
    local last = tonumber(redis.call('HGET', fair, 'f:' .. tenant) or '')
    if last then
      redis.call('HDEL', fair, 'f:' .. tenant)
      start = math.max(start, last)
    end
    redis.call('ZADD', tenants, num(start), tenant)
  end
  lined[tenant] = true
  redis.call('HSET', tkey, 'open', '1')
  count, counted = count + 1, true
  if count == 1 then
    deadline = now + tonumber(ARGV[4])
    redis.call('PUBLISH', ARGV[9], 'timer')
  end
end

-- The next task by fair share, then priority and age within its tenant, and its status;
-- nil when none waits.
local function pick()
  local head = redis.call('ZRANGE', tenants, 0, 0, 'WITHSCORES')
  if #head == 0 then return nil end
  local tenant, start = head[1], tonumber(head[2])
  local line = wprefix .. tenant
  local popped = redis.call('ZPOPMIN', line)
  if #popped == 0 then  -- cannot happen while scripts are atomic; never loop on it
    redis.call('ZREM', tenants, tenant)
    lined[tenant] = nil
    return pick()
  end
  local id = popped[1]
  local t = redis.call('HMGET', tprefix .. id, 'cost', 'status')
  local cost = math.max(tonumber(t[1] or '1') or 1, 1)
  local finish = start + cost / weight_of(tenant)
  if start > v then v = start end
  if redis.call('ZCARD', line) > 0 then
    redis.call('ZADD', tenants, num(finish), tenant)
  else
    redis.call('ZREM', tenants, tenant)
    lined[tenant] = nil
    redis.call('HSET', fair, 'f:' .. tenant, num(finish))
  end
  count, counted = count - 1, true
  return id, t[2]
end

local function flush(most, reason)
  local ids, statuses = {}, {}
  while #ids < most do
    local id, status = pick()
    if not id then break end
    ids[#ids + 1] = id
    statuses[#ids] = status
  end
  if #ids == 0 then
    -- Nothing waits after all: a counter or timer left behind must not make a coordinator
    -- spin on a due timer with nothing to send.
    count, deadline, counted = 0, 0, true
    return 0
  end
  if reason == 'room' then  -- sent because there is room: full, or adaptive
    reason = #ids >= size and 'size' or 'idle'
  end
  local bid = 'b' .. ARGV[2] .. '-' .. redis.call('INCR', KEYS[5])
  local event = '{"status":"' .. BATCHED .. '","batch_id":"' .. bid .. '"}'
  for i, id in ipairs(ids) do
    local tkey = tprefix .. id
    redis.call('HDEL', tkey, 'open')
    if statuses[i] == QUEUED then
      redis.call('HSET', tkey, 'status', BATCHED, 'batch_id', bid)
      redis.call('XADD', ARGV[8] .. id, '*', 'e', EV_STATUS, 'd', event)
    end
  end
  redis.call('XADD', batches, '*', 'b', bid, 't', table.concat(ids, ','), 'r', reason,
    'at', ARGV[2])
  backlog = redis.call('INCRBY', KEYS[6], #ids)
  redis.call('HINCRBY', KEYS[9], 'batches_' .. reason, 1)
  redis.call('HINCRBY', KEYS[9], 'batched_tasks', #ids)
  flushed = flushed + 1
  if count <= 0 then
    count, deadline = 0, 0
  elseif reason == 'timer' then
    -- The tasks still waiting get a timer of their own: the next batch is due in one timeout.
    deadline = now + tonumber(ARGV[4])
  end
  return #ids
end

-- Free task slots of live processors, no more than the provider's governor has room for,
-- less the tasks already flushed but not yet taken. nil: no live processor reports a room.
local function spare_capacity()
  local free, room = 0, nil
  local names = redis.call('ZRANGEBYSCORE', KEYS[8], now, '+inf')
  if #names == 0 then return 0 end
  local frees = redis.call('HMGET', KEYS[7], unpack(names))
  local rooms = redis.call('HMGET', KEYS[13], unpack(names))
  for i = 1, #names do
    free = free + tonumber(frees[i] or '0')
    local r = tonumber(rooms[i] or '')
    -- Each processor sees the same cluster-wide room (less its own waiting calls): summing
    -- would count it once per processor.
    if r then room = math.max(room or r, r) end
  end
  if room then free = math.min(free, room) end
  if free <= 0 then return 0 end
  if backlog >= free then
    -- The counter can drift up if a processor died between reading a batch and counting it;
    -- the group's lag is the truth when it says nothing is waiting.
    local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', batches)
    if ok then
      for _, g in ipairs(groups) do
        local info = {}
        for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
        if info['name'] == ARGV[10] and tonumber(info['lag'] or -1) == 0 then
          redis.call('SET', KEYS[6], 0)
          backlog = 0
        end
      end
    end
  end
  return free - backlog
end

-- Tasks left in the open batch list by an earlier version join the waiting room once.
if redis.call('EXISTS', KEYS[14]) == 1 then
  for _, id in ipairs(redis.call('LRANGE', KEYS[14], 0, -1)) do
    redis.call('HDEL', tprefix .. id, 'open')
    enqueue(id, tprefix .. id,
      redis.call('HMGET', tprefix .. id, 'tenant', 'priority', 'created_at', 'cost'))
  end
  redis.call('DEL', KEYS[14])
end

local mode, adaptive = ARGV[1], ARGV[5] == '1'
if mode == 'add' then
  local acks = {'XACK', KEYS[4], ARGV[6]}
  for i = 13, #ARGV, 2 do
    local id = ARGV[i + 1]
    local tkey = tprefix .. id
    local f = redis.call('HMGET', tkey, 'tenant', 'priority', 'created_at', 'cost', 'status',
      'batch_id', 'open')
    -- A reclaimed entry may name a task already placed: place each task once. (A task's hash
    -- always has its status: none, and the task is gone.)
    if f[5] and not f[6] and not f[7] then
      enqueue(id, tkey, f)
    end
    acks[#acks + 1] = ARGV[i]
  end
  if #acks > 3 then redis.call(unpack(acks)) end
  if not adaptive then
    while count >= size do flush(size, 'size') end
  end
elseif mode == 'timer' then
  if deadline > 0 and deadline <= now then flush(size, 'timer') end
elseif mode == 'flush' then
  while count > 0 and flush(size, 'forced') > 0 do end
end
if adaptive and count > 0 then
  -- Batches leave in fair order as room opens; while there is none they wait here, where a
  -- tenant's later tasks can still overtake another's earlier burst.
  local spare = spare_capacity()
  while spare > 0 and count > 0 do
    local n = flush(math.min(size, spare), 'room')
    if n == 0 then break end
    spare = spare - n
  end
end
local write_count = counted or count ~= count0
if deadline ~= deadline0 and deadline > 0 then
  if write_count then
    redis.call('MSET', count_key, count, deadline_key, deadline)
  else
    redis.call('SET', deadline_key, deadline)
  end
else
  if write_count then redis.call('SET', count_key, count) end
  if deadline ~= deadline0 then redis.call('DEL', deadline_key) end
end
if v ~= v0 and seq ~= seq0 then
  redis.call('HSET', fair, 'v', num(v), 'seq', seq)
elseif v ~= v0 then
  redis.call('HSET', fair, 'v', num(v))
elseif seq ~= seq0 then
  redis.call('HSET', fair, 'seq', seq)
end
return {count, deadline, flushed}

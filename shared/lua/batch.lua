#!lua
-- Refused whole over maxmemory (shebang without allow-oom, checked before the first command):
-- it moves queued tasks on towards processors that could not begin them. The coordinator waits.
-- The batcher: add tasks to the open batch, flush it when full, when its timer is due, or at
-- once when processors have free capacity. One script, so every task lands in exactly one batch
-- however many coordinators run and whenever one of them dies. Mode 'flush' flushes at once
-- whatever the size and timer: a coordinator's burst (tests) ends with it.
-- KEYS[1] open batch list, KEYS[2] deadline, KEYS[3] batches stream, KEYS[4] tasks stream,
-- KEYS[5] batch sequence, KEYS[6] backlog counter, KEYS[7] processors' free slots hash,
-- KEYS[8] processors' heartbeat zset, KEYS[9] stats hash
-- ARGV[1] mode: 'add' | 'timer' | 'idle' | 'flush', ARGV[2] now (ms), ARGV[3] batch size,
-- ARGV[4] batch timeout (ms), ARGV[5] adaptive '1'|'0', ARGV[6] coordinators' group,
-- ARGV[7] task key prefix, ARGV[8] events key prefix, ARGV[9] channel to announce a new timer,
-- ARGV[10] processors' group, ARGV[11..] pairs of (tasks stream entry id, task id) for 'add'
-- Returns {open batch length, deadline ms or 0, number of batches flushed}
local open, deadline_key, batches = KEYS[1], KEYS[2], KEYS[3]
local now, size = tonumber(ARGV[2]), tonumber(ARGV[3])
local flushed = 0

local function flush(reason)
  local ids = redis.call('LRANGE', open, 0, -1)
  if #ids == 0 then return end
  redis.call('DEL', open, deadline_key)
  local bid = 'b' .. ARGV[2] .. '-' .. redis.call('INCR', KEYS[5])
  for _, id in ipairs(ids) do
    local tkey = ARGV[7] .. id
    redis.call('HDEL', tkey, 'open')
    if redis.call('HGET', tkey, 'status') == QUEUED then
      redis.call('HSET', tkey, 'status', BATCHED, 'batch_id', bid)
      redis.call('XADD', ARGV[8] .. id, '*', 'e', EV_STATUS,
        'd', '{"status":"' .. BATCHED .. '","batch_id":"' .. bid .. '"}')
    end
  end
  redis.call('XADD', batches, '*', 'b', bid, 't', table.concat(ids, ','), 'r', reason,
    'at', ARGV[2])
  redis.call('INCRBY', KEYS[6], #ids)
  redis.call('HINCRBY', KEYS[9], 'batches_' .. reason, 1)
  redis.call('HINCRBY', KEYS[9], 'batched_tasks', #ids)
  flushed = flushed + 1
end

-- Free task slots of live processors, less the tasks already flushed but not yet taken.
local function spare_capacity()
  local free = 0
  for _, name in ipairs(redis.call('ZRANGEBYSCORE', KEYS[8], now, '+inf')) do
    free = free + tonumber(redis.call('HGET', KEYS[7], name) or '0')
  end
  if free <= 0 then return 0 end
  local backlog = tonumber(redis.call('GET', KEYS[6]) or '0')
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

local mode = ARGV[1]
if mode == 'add' then
  for i = 11, #ARGV, 2 do
    local id = ARGV[i + 1]
    local tkey = ARGV[7] .. id
    -- A reclaimed entry may name a task already placed: place each task once.
    if redis.call('EXISTS', tkey) == 1 and redis.call('HEXISTS', tkey, 'batch_id') == 0
        and redis.call('HEXISTS', tkey, 'open') == 0 then
      redis.call('HSET', tkey, 'open', '1')
      local n = redis.call('RPUSH', open, id)
      if n == 1 then
        redis.call('SET', deadline_key, now + tonumber(ARGV[4]))
        redis.call('PUBLISH', ARGV[9], 'timer')
      end
      if n >= size then flush('size') end
    end
    redis.call('XACK', KEYS[4], ARGV[6], ARGV[i])
  end
elseif mode == 'timer' then
  local due = tonumber(redis.call('GET', deadline_key) or '0')
  if due > 0 and due <= now then flush('timer') end
elseif mode == 'flush' then
  flush('forced')
end
if ARGV[5] == '1' and redis.call('LLEN', open) > 0 and spare_capacity() > 0 then
  flush('idle')
end
return {redis.call('LLEN', open), tonumber(redis.call('GET', deadline_key) or '0'), flushed}

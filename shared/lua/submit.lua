-- Store a new task and queue it, in one step: a 202 is only ever sent for a stored task.
-- KEYS[1] task hash, KEYS[2] task events stream, KEYS[3] tasks stream, KEYS[4] idempotency key
-- ARGV[1] task id, ARGV[2] tenant, ARGV[3] request JSON, ARGV[4] model, ARGV[5] now (ms),
-- ARGV[6] body hash ('' when no Idempotency-Key), ARGV[7] idempotency TTL (s),
-- ARGV[8] data of the first status event, ARGV[9] task TTL while not finished (s)
-- Returns {'created', id} | {'existing', id} | {'conflict', id}
if ARGV[6] ~= '' then
  local prev = redis.call('GET', KEYS[4])
  if prev then
    local sep = string.find(prev, ' ', 1, true)
    local prev_id = string.sub(prev, 1, sep - 1)
    if string.sub(prev, sep + 1) == ARGV[6] then return {'existing', prev_id} end
    return {'conflict', prev_id}
  end
  redis.call('SET', KEYS[4], ARGV[1] .. ' ' .. ARGV[6], 'EX', ARGV[7])
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'tenant', ARGV[2], 'status', 'queued',
  'request', ARGV[3], 'model', ARGV[4], 'created_at', ARGV[5], 'attempts', '0', 'fence', '0')
redis.call('EXPIRE', KEYS[1], ARGV[9])
redis.call('XADD', KEYS[2], '*', 'e', 'status', 'd', ARGV[8])
redis.call('EXPIRE', KEYS[2], ARGV[9])
redis.call('XADD', KEYS[3], '*', 'id', ARGV[1])
return {'created', ARGV[1]}

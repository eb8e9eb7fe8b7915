-- Acquire a lock and draw its fencing token, in one atomic step.
--
-- KEYS[1]  lock key: holds the holder's token and expires after the TTL
-- KEYS[2]  fencing counter of that lock (same hash slot as KEYS[1]; never expires)
-- ARGV[1]  token of this acquisition (a ULID)
-- ARGV[2]  TTL in milliseconds
--
-- Returns the new fencing token (> 0), or 0 when someone else holds the lock.
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 0
end
local fence = redis.call('INCR', KEYS[2])
if fence == 1 then
  -- The counter did not exist: first use, or lost in a restart without persistence.
  -- Restart it from the server clock in microseconds, so that it stays above every token
  -- issued before the loss (unless the clock went back or the key saw more than a
  -- million acquisitions a second).
  local now = redis.call('TIME')
  fence = tonumber(now[1]) * 1000000 + tonumber(now[2])
  redis.call('SET', KEYS[2], string.format('%d', fence))
end
return fence

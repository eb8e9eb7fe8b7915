-- Clears a semaphore that nobody holds, so that a lock can take its name: run by a lock
-- attempt that found the name kept as a semaphore (obtain.lua failed with WRONGTYPE).
--
-- KEYS[1]  the semaphore's hash
-- KEYS[2]  its sorted set of holders
-- KEYS[3]  its line of waiters
--
-- Returns 0 when the name is free for a lock now (cleared, or not a semaphore any more),
-- else the semaphore's number of permits.
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then
  return 0
end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if redis.call('ZCOUNT', KEYS[2], '(' .. ms, '+inf') > 0 then
  return tonumber(redis.call('HGET', KEYS[1], '#n')) or 2
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 0

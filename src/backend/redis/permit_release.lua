-- Release a semaphore permit if it is still held by our acquisition, and tell waiters a
-- permit is free if any announced themselves. Idempotent: sent twice, it answers 1 both
-- times. release.lua for permits (see permit_obtain.lua for the keys).
--
-- KEYS[1]  the semaphore's hash
-- KEYS[2]  its sorted set of holders
-- ARGV[1]  token of the acquisition
-- ARGV[2]  how long the tombstone `~<token>` stays, in milliseconds (see release.lua)
-- ARGV[3]  id of the releasing store handle: it woke its own waiter already
-- ARGV[4]  `bar` when this undoes an attempt whose outcome is unknown: if the attempt has not
--          taken a permit (yet), its tombstone bars it (see release.lua)
--
-- Publishes on `<hash key>:released` when a waiter's mark is there, the way that waiter
-- listens, and removes the mark: a waiter that finds no permit marks again.
--
-- Returns 1 when released (now or by an earlier copy of this call), 0 when the permit had
-- expired or was deleted.
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window = tonumber(ARGV[2])
local tombstone = '~' .. ARGV[1]
local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1])
if expiry and tonumber(expiry) > ms then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[2], -(ms + window), tombstone)
  local marks = redis.call('HMGET', KEYS[1], '!', '^')
  if marks[1] or marks[2] then
    redis.call('HDEL', KEYS[1], '!', '^')
    local channel = KEYS[1] .. ':released'
    if marks[1] then
      redis.call('PUBLISH', channel, ARGV[3])
    end
    if marks[2] then
      if redis.REDIS_VERSION then
        redis.call('SPUBLISH', channel, ARGV[3])
      else
        redis.call('PUBLISH', channel, ARGV[3])
      end
    end
  end
  if redis.call('ZCOUNT', KEYS[2], '(0', '+inf') == 0 then
    -- Nobody holds it: the semaphore is gone once the tombstone's time is over.
    redis.call('PEXPIRE', KEYS[1], window)
    redis.call('PEXPIRE', KEYS[2], window)
  end
  return 1
end
if redis.call('ZSCORE', KEYS[2], tombstone) then
  return 1
end
if ARGV[4] == 'bar' then
  redis.call('ZADD', KEYS[2], -(ms + window), tombstone)
  if redis.call('PTTL', KEYS[2]) < window then
    redis.call('PEXPIRE', KEYS[2], window)
  end
end
return 0

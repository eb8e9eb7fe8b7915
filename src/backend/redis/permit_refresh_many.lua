-- Extend the TTL of many semaphore permits at once, each only if it is still held by our
-- acquisition: refresh_many.lua for permits (see permit_obtain.lua for the keys).
--
-- KEYS[2i-1]   the hash of permit i's semaphore
-- KEYS[2i]     its sorted set of holders
-- ARGV[2i-1]   token of acquisition i
-- ARGV[2i]     its TTL in milliseconds
--
-- Returns an array with, for each permit in order, 1 when renewed, 0 when it expired, was
-- released or deleted.
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local renewed = {}
for i = 1, #KEYS / 2 do
  local hash, holders, token = KEYS[2 * i - 1], KEYS[2 * i], ARGV[2 * i - 1]
  local expiry = redis.call('ZSCORE', holders, token)
  if expiry and tonumber(expiry) > ms then
    local ttl = tonumber(ARGV[2 * i])
    redis.call('ZADD', holders, 'XX', ms + ttl, token)
    local keep = math.max(redis.call('PTTL', holders), ttl)
    redis.call('PEXPIRE', hash, keep)
    redis.call('PEXPIRE', holders, keep)
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
return renewed

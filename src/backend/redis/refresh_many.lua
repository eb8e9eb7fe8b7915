-- Extend the TTL of many locks at once, each only if it still holds our acquisition:
-- refresh.lua for a batch, so that holding many locks costs one script call per batch.
--
-- KEYS[i]      lock key i (value `<token>:<fencing token>...`, see obtain.lua)
-- ARGV[2i-1]   token of acquisition i
-- ARGV[2i]     TTL of lock i in milliseconds
--
-- Returns an array with, for each lock in order, 1 when renewed, 0 when the key is gone,
-- released or holds another acquisition.
local renewed = {}
for i = 1, #KEYS do
  local value = redis.call('GET', KEYS[i])
  local own = ARGV[2 * i - 1] .. ':'
  if value and string.sub(value, 1, #own) == own then
    renewed[i] = redis.call('PEXPIRE', KEYS[i], ARGV[2 * i])
  else
    renewed[i] = 0
  end
end
return renewed

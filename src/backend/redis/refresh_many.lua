-- Extend the TTL of many locks at once, each only if it still holds our acquisition:
-- refresh.lua for a batch, so that holding many locks costs one script call per batch.
--
-- KEYS[i]      lock key i (value `<token>:<fencing token>...`, see obtain.lua)
-- ARGV[2i-1]   token of acquisition i
-- ARGV[2i]     TTL of lock i in milliseconds
--
-- Returns an array with, for each lock in order, 1 when renewed, 0 when the key is gone,
-- released or holds another acquisition.
--
-- Written for the server's time: the token is found in place (a plain `find` at position 1
-- and the byte after it), so that checking a lock makes no new Lua string.
local renewed = {}
for i = 1, #KEYS do
  -- pcall: a key that a semaphore took meanwhile (a hash) is not ours, and must not fail
  -- the batch's other locks.
  local value = redis.pcall('GET', KEYS[i])
  if type(value) == 'table' and not string.find(value.err, 'WRONGTYPE', 1, true) then
    return value -- any other error (a refused right) is the caller's to see
  end
  local token = ARGV[2 * i - 1]
  if type(value) == 'string' and string.find(value, token, 1, true) == 1
      and string.byte(value, #token + 1) == 58 then -- `:`
    renewed[i] = redis.call('PEXPIRE', KEYS[i], ARGV[2 * i])
  else
    renewed[i] = 0
  end
end
return renewed

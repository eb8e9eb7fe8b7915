-- Extend a lock's TTL if it still holds our acquisition.
--
-- KEYS[1]  lock key (value `<token>:<fencing token>[!][~<previous token>]`, see obtain.lua)
-- ARGV[1]  token of the acquisition
-- ARGV[2]  TTL in milliseconds
--
-- Returns 1 when renewed, 0 when the key is gone, released or holds another acquisition.
-- pcall: a key that a semaphore took meanwhile (a hash) is not ours.
local value = redis.pcall('GET', KEYS[1])
if type(value) == 'table' and not string.find(value.err, 'WRONGTYPE', 1, true) then
  return value -- any other error (a refused right) is the caller's to see
end
local own = ARGV[1] .. ':'
if type(value) == 'string' and string.sub(value, 1, #own) == own then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0

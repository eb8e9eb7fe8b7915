-- Extend a lock's TTL if it still holds our token.
--
-- KEYS[1]  lock key
-- ARGV[1]  token of the acquisition
-- ARGV[2]  TTL in milliseconds
--
-- Returns 1 when renewed, 0 when the key is gone or holds another token.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0

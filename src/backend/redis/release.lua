-- Delete a lock if it still holds our token, and tell waiters it is free.
--
-- KEYS[1]  lock key
-- ARGV[1]  token of the acquisition
-- ARGV[2]  release channel of the lock: waiters subscribed to it retry at once
-- ARGV[3]  the releasing process's id: that process woke its own waiter already
--
-- Returns 1 when released, 0 when the key is gone or holds another token.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0

-- Who holds a lock, for `Locker::holder`: reads only.
--
-- KEYS[1]  lock key (see obtain.lua for its value)
--
-- Returns false when the lock is free (no key, or a release's tombstone `~<token>`), else
-- { value, remaining TTL in milliseconds }.
local value = redis.call('GET', KEYS[1])
if not value or string.byte(value, 1) == 126 then
  return false
end
return { value, redis.call('PTTL', KEYS[1]) }

-- Release a lock if it still holds our acquisition, and tell waiters it is free if any
-- announced themselves. Idempotent: sent twice, it answers 1 both times, even if a waiter
-- took the lock in between.
--
-- KEYS[1]  lock key (value `<token>:<fencing token>[!][^][~<previous token>]`, see obtain.lua)
-- ARGV[1]  token of the acquisition
-- ARGV[2]  how long the tombstone `~<token>` stays, in milliseconds: the window in which a
--          resent release can still recognise its own earlier success
-- ARGV[3]  id of the releasing store handle: it woke its own waiter already
-- ARGV[4]  `bar` when this undoes an attempt whose outcome is unknown: if the attempt has not
--          taken the lock (yet), its token is barred with a tombstone `~<token>` (for ARGV[2]),
--          so that the attempt, should it reach the server later (sent on a connection that
--          was replaced meanwhile), takes nothing (obtain.lua)
--
-- Publishes on `<lock key>:released` only when the value carries a waiter's mark, the way
-- that waiter listens: `!` PUBLISH (broadcast to every node of a Cluster), `^` SPUBLISH
-- (only the shard that owns the key's slot, where the channel's hash tag puts it).
--
-- Returns 1 when released (now or by an earlier copy of this call), 0 when the key is gone
-- or holds another acquisition.
local value = redis.pcall('GET', KEYS[1])
if type(value) == 'table' then
  if not string.find(value.err, 'WRONGTYPE', 1, true) then
    return value -- any other error (a refused right) is the caller's to see
  end
  return 0 -- a semaphore took the name (a hash): the lock is not ours
end
if not value then
  if ARGV[4] == 'bar' then
    redis.call('SET', KEYS[1], '~' .. ARGV[1], 'PX', ARGV[2])
  end
  return 0
end
local own = ARGV[1] .. ':'
if string.sub(value, 1, #own) == own then
  redis.call('SET', KEYS[1], '~' .. ARGV[1], 'PX', ARGV[2])
  if string.find(value, '!', #own, true) then
    redis.call('PUBLISH', KEYS[1] .. ':released', ARGV[3])
  end
  if string.find(value, '^', #own, true) then
    -- Redis 7.0 brought both SPUBLISH and `redis.REDIS_VERSION`. On an older server the
    -- waiter's connection fell back to SUBSCRIBE (notifications.rs), so PUBLISH reaches it.
    if redis.REDIS_VERSION then
      redis.call('SPUBLISH', KEYS[1] .. ':released', ARGV[3])
    else
      redis.call('PUBLISH', KEYS[1] .. ':released', ARGV[3])
    end
  end
  return 1
end
-- Our tombstone, or a newer holder's value that carries it: an earlier copy released.
local marker = '~' .. ARGV[1]
if string.sub(value, -#marker) == marker then
  return 1
end
-- Another release's tombstone: the bar goes in front of it (its own end stays its own).
if ARGV[4] == 'bar' and string.byte(value, 1) == 126 and not string.find(value, marker, 1, true) then
  redis.call('SET', KEYS[1], marker .. value, 'PX', ARGV[2])
end
return 0

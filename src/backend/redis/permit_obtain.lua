-- Take one of the N permits of a semaphore and draw its fencing token, in one atomic step.
-- Idempotent: sent twice, it answers the same token. A lock is not kept this way: N = 1
-- is obtain.lua.
--
-- KEYS[1]  the semaphore's hash: `#n` its number of permits, `#last` the last fencing
--          token drawn, `<token>` → each holder's fencing token (then `#<hex>`, its
--          published value), and the marks `!`/`^` of waiters (see obtain.lua, ARGV[3])
-- KEYS[2]  its holders: a sorted set of their tokens scored by expiry (server ms), and of
--          tombstones `~<token>` (of releases and undone attempts, see permit_release.lua)
--          scored by minus their expiry
-- KEYS[3]  its line: the tokens of waiting acquisitions scored by arrival (server µs); each
--          keeps its place while it tries again in time (hash field `@<token>`: until when)
-- ARGV[1]  token of this acquisition (a ULID)
-- ARGV[2]  TTL in milliseconds
-- ARGV[3]  N, the number of permits
-- ARGV[4]  the waiter's mark (`!` or `^`, see obtain.lua) or `0`
-- ARGV[5]  `#` and the value the holder publishes, hex-encoded, or empty
-- ARGV[6]  how long a waiting acquisition keeps its place in line without trying again, in
--          milliseconds; 0 for an attempt that does not wait (it takes no place)
--
-- Returns the fencing token (> 0), 0 when no permit is free for this attempt (or its token is
-- barred), or -M when the semaphore is held with M permits (-1: the name is a held lock).
--
-- Fairness: a permit is free for an attempt when the holders and the waiters ahead of it in
-- line number fewer than N. A waiter is served before everyone who arrived after it, and a
-- newcomer (a try, a task that just released) never takes a permit that a waiter is due.
--
-- The fencing token is the server clock in microseconds, and more than the last one drawn
-- while the semaphore was kept: strictly increasing as a lock's (obtain.lua).
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
-- What this attempt needs of the hash, in one read: its own entry (a resent copy), the
-- semaphore's N and the last fencing token. A string there is a lock's key.
local fields = redis.pcall('HMGET', KEYS[1], ARGV[1], '#n', '#last')
if fields.err then
  if not string.find(fields.err, 'WRONGTYPE', 1, true) then
    return fields -- any other error (a refused right) is the caller's to see
  end
  if string.byte(redis.call('GET', KEYS[1]), 1) ~= 126 then
    return -1 -- a held lock
  end
  redis.call('DEL', KEYS[1]) -- a released lock's tombstone: free
  fields = {}
end
local own, theirs, last = fields[1], tonumber(fields[2]), tonumber(fields[3])
-- Holders whose TTL ran out leave, with their entries; so do tombstones whose time is over
-- (holders are scored in (0, ms] once expired, tombstones in [-ms, 0)).
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], 0, ms)
for i = 1, #expired do
  redis.call('HDEL', KEYS[1], expired[i])
  if expired[i] == ARGV[1] then
    own = false
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], -ms, ms)
local ttl = tonumber(ARGV[2])
if own then -- a resent copy of an attempt that took a permit
  redis.call('ZADD', KEYS[2], 'XX', ms + ttl, ARGV[1])
  return tonumber(string.match(own, '^%d+'))
end
if redis.call('ZSCORE', KEYS[2], '~' .. ARGV[1]) then
  return 0 -- undone (or released) before this copy arrived: takes nothing
end
local n = tonumber(ARGV[3])
local held = redis.call('ZCOUNT', KEYS[2], '(0', '+inf')
if held > 0 and theirs and theirs ~= n then
  return -theirs
end
-- The line, without the waiters that stopped trying in time (gone, cancelled); where this
-- attempt stands in it (an attempt not in line stands behind all of it).
local line = redis.call('ZRANGE', KEYS[3], 0, -1)
local ahead, in_line = 0, false
for i = 1, #line do
  local until_ms = tonumber(redis.call('HGET', KEYS[1], '@' .. line[i]))
  if not until_ms or until_ms <= ms then
    redis.call('ZREM', KEYS[3], line[i])
    redis.call('HDEL', KEYS[1], '@' .. line[i])
  elseif line[i] == ARGV[1] then
    in_line = true
  elseif not in_line then
    ahead = ahead + 1
  end
end
if held + ahead >= n then
  local mark = ARGV[4]
  if mark == '!' or mark == '^' then
    redis.call('HSET', KEYS[1], mark, 1)
  end
  local patience = tonumber(ARGV[6])
  if patience > 0 then
    if not in_line then
      redis.call('ZADD', KEYS[3], tonumber(now[1]) * 1000000 + tonumber(now[2]), ARGV[1])
    end
    redis.call('HSET', KEYS[1], '@' .. ARGV[1], ms + patience)
    for i = 1, 3 do
      if redis.call('PTTL', KEYS[i]) < patience then
        redis.call('PEXPIRE', KEYS[i], patience)
      end
    end
  end
  return 0
end
if in_line then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('HDEL', KEYS[1], '@' .. ARGV[1])
end
local fence = tonumber(now[1]) * 1000000 + tonumber(now[2])
if last and fence <= last then
  fence = last + 1
end
local digits = string.format('%.0f', fence)
redis.call('HSET', KEYS[1], ARGV[1], digits .. ARGV[5], '#last', digits, '#n', ARGV[3])
redis.call('ZADD', KEYS[2], ms + ttl, ARGV[1])
-- Both keys live as long as their longest holder. A hash without `#last` was new (or held
-- waiters' entries only): its TTL is set whatever the holders' is.
local pttl = redis.call('PTTL', KEYS[2])
if pttl < ttl or not last then
  local keep = math.max(pttl, ttl)
  redis.call('PEXPIRE', KEYS[1], keep)
  redis.call('PEXPIRE', KEYS[2], keep)
end
return fence

-- Acquire a lock and draw its fencing token, in one atomic step. Idempotent: sent twice
-- (a client that resends after a dropped connection), it answers the same token.
--
-- KEYS[1]  lock key. Its value is `<token>:<fencing token>[#<published value, hex>]` while
--          held, optionally followed by `~<token>` of the holder released just before (see
--          release.lua); a released lock is a tombstone `~<token>` that counts as free.
-- ARGV[1]  token of this acquisition (a ULID: no `:` and no `~`)
-- ARGV[2]  TTL in milliseconds
-- ARGV[3]  `#` and the value the holder publishes, hex-encoded (so that it holds no `~`),
--          or empty
--
-- Returns the fencing token (> 0), or 0 when someone else holds the lock.
--
-- The fencing token is the server clock in microseconds: it needs no counter key (nothing
-- to leak, nothing a restored snapshot can roll back), and it increases across restarts,
-- persistence reloads and failovers as long as the clock of the server that answers does
-- not step back by more than the time between two acquisitions of the key.
local value = redis.call('GET', KEYS[1])
local previous = ''
if value then
  local held = string.match(value, '^([^~]+)')
  if held then
    local token, fence = string.match(held, '^([^:]*):(%d+)')
    if token == ARGV[1] then
      redis.call('PEXPIRE', KEYS[1], ARGV[2])
      return tonumber(fence)
    end
    return 0
  end
  previous = value
end
local now = redis.call('TIME')
local fence = tonumber(now[1]) * 1000000 + tonumber(now[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. string.format('%d', fence) .. ARGV[3] .. previous, 'PX', ARGV[2])
return fence

-- Acquire a lock and draw its fencing token, in one atomic step. Idempotent: sent twice
-- (a client that resends after a dropped connection), it answers the same token.
--
-- KEYS[1]  lock key. Its value is `<token>:<fencing token>` while held, then the value the
--          holder published (see ARGV[4]), then the marks `!` and/or `^` of waiters that
--          announced themselves (see ARGV[3]), then optionally `~<token>` of the holder released just before (see
--          release.lua); a released lock is a tombstone `~<token>` that counts as free, except
--          for the token it names (an undone attempt's late copy, a resent acquire).
-- ARGV[1]  token of this acquisition (a ULID: no `:`, `!` or `~`)
-- ARGV[2]  TTL in milliseconds
-- ARGV[3]  how the caller listens for the release, when it waits for a notification: `!`
--          (SUBSCRIBE: the release PUBLISHes) or `^` (SSUBSCRIBE on the key's shard: the
--          release SPUBLISHes); anything else (`0`) when it does not wait. If the lock is held, it gets that
--          mark, so that its release publishes the way the waiter listens. Without a mark
--          nobody is subscribed (or only pollers are), and the release publishes nothing.
-- ARGV[4]  `#` and the value the holder publishes, hex-encoded (so that it holds no `!` or
--          `~`), or empty
-- ARGV[5..] tokens of this client's own attempts that it undid (abandoned.rs): a lock held
--          by one of them is nobody's (its undo reached another server), and is taken over
--
-- Returns the fencing token (> 0) as a decimal string, or 0 when someone else holds the lock.
--
-- The fencing token is the server clock in microseconds: it needs no counter key (nothing
-- to leak, nothing a restored snapshot can roll back), and it increases across restarts,
-- persistence reloads and failovers as long as the clock of the server that answers does
-- not step back by more than the time between two acquisitions of the key.
-- Written for the server's time: plain string operations (no patterns, no string.format,
-- whose '%d' of a double costs more than the rest of the script).
local value = redis.call('GET', KEYS[1])
local previous = ''
if value then
  if string.byte(value, 1) ~= 126 then -- not a tombstone `~...`: held
    local own = ARGV[1] .. ':'
    if string.sub(value, 1, #own) == own then
      redis.call('PEXPIRE', KEYS[1], ARGV[2])
      return string.match(value, '%d+', #own + 1)
    end
    local abandoned = false
    for i = 5, #ARGV do
      local theirs = ARGV[i] .. ':'
      if string.sub(value, 1, #theirs) == theirs then
        abandoned = true
      end
    end
    if not abandoned then
      local mark = ARGV[3]
      if (mark == '!' or mark == '^') and not string.find(value, mark, 1, true) then
        -- The mark lives and dies with this holder's value: a waiter that dies costs at
        -- most one needless publish.
        local released = string.find(value, '~', 1, true) or (#value + 1)
        local marked = string.sub(value, 1, released - 1) .. mark .. string.sub(value, released)
        redis.call('SET', KEYS[1], marked, 'KEEPTTL')
      end
      return 0
    end
    -- Held by an attempt this client undid: taken over below, as a free lock. (Waiters'
    -- marks on it are dropped: they learn of the next release by polling.)
  else
    -- A tombstone that bars this token: the attempt was undone (or released) before this
    -- copy arrived, and must take nothing.
    if string.find(value, '~' .. ARGV[1], 1, true) then
      return 0
    end
    previous = value
  end
end
-- TIME answers seconds and microseconds as strings: the token is their digits, the
-- microseconds padded to six.
local now = redis.call('TIME')
local fence = now[1] .. string.sub('00000' .. now[2], -6)
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence .. ARGV[4] .. previous, 'PX', ARGV[2])
return fence

-- Hand a held lock over to another acquisition of the same client, in one atomic step,
-- instead of releasing it (where every process's waiters would race for it). The lock is
-- never free in between; the taker gets a fencing token of its own, drawn as obtain.lua
-- draws it. Idempotent: sent twice, it answers the same token.
--
-- KEYS[1]  lock key (value `<token>:<fence>[#<hex>][!][^][~<token>]`, see obtain.lua)
-- ARGV[1]  token of the holder handing the lock over
-- ARGV[2]  token of the taker
-- ARGV[3]  the taker's TTL in milliseconds
-- ARGV[4]  the taker's published value (`#` and hex, see obtain.lua), or empty
--
-- The taker's value keeps the waiters' marks (`!`, `^`: the next release still announces
-- itself) and ends with `~<holder's token>`, so that a resent release of the holder still
-- recognises its own success (release.lua).
--
-- Returns the taker's fencing token as a decimal string, or 0 when the lock is not the
-- holder's any more (nothing is written).
local value = redis.call('GET', KEYS[1])
if not value then
  return 0
end
local taker = ARGV[2] .. ':'
if string.sub(value, 1, #taker) == taker then
  return string.match(value, '%d+', #taker + 1) -- an earlier copy handed it over
end
local own = ARGV[1] .. ':'
if string.sub(value, 1, #own) ~= own then
  return 0
end
local ends = string.find(value, '~', 1, true) or (#value + 1)
local marks = ''
if string.find(value, '!', #own, true) and string.find(value, '!', #own, true) < ends then
  marks = marks .. '!'
end
if string.find(value, '^', #own, true) and string.find(value, '^', #own, true) < ends then
  marks = marks .. '^'
end
local now = redis.call('TIME')
local fence = now[1] .. string.sub('00000' .. now[2], -6)
redis.call('SET', KEYS[1], taker .. fence .. ARGV[4] .. marks .. '~' .. ARGV[1], 'PX', ARGV[3])
return fence

-- Who holds a semaphore, for `Semaphore::holders`, or whether a lock's name is kept as a
-- semaphore: reads only (see permit_obtain.lua for the keys).
--
-- KEYS[1]  the semaphore's hash (or a lock's key)
-- KEYS[2]  its sorted set of holders
--
-- Returns { N, value 1, remaining TTL 1 in ms, value 2, ... } for each live holder, every
-- item a string; a value is `<fencing token>[#<hex>]`. N is `0` when nobody holds the
-- semaphore, `1` when the name is a held lock.
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'string' then
  if string.byte(redis.call('GET', KEYS[1]), 1) ~= 126 then
    return { '1' }
  end
  return { '0' }
end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ms, '+inf', 'WITHSCORES')
if #live == 0 then
  return { '0' }
end
local reply = { redis.call('HGET', KEYS[1], '#n') or '0' }
for i = 1, #live, 2 do
  reply[#reply + 1] = redis.call('HGET', KEYS[1], live[i]) or '0'
  reply[#reply + 1] = string.format('%.0f', tonumber(live[i + 1]) - ms)
end
return reply

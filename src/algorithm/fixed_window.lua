-- Fixed window on Redis's own clock: the counter is a plain integer and its
-- expiry is the window. The INCRBY that creates the key opens the window (and
-- gives it its expiry at once); the window ends when the key expires, so no
-- clock is read and app servers' clocks play no part.
-- KEYS: one counter per limit. ARGV[1]: cost (0: a peek, which counts
-- nothing; negative: a refund). Then per limit: limit, window (ms).
-- Returns per limit `count × (window + 1) + ms left in the window` (count
-- with this cost; for a key that does not exist yet, the whole window): one
-- integer, so one limit's reply is not a table, which costs Redis more than
-- the arithmetic. It stays exact: count ≤ 2 × limit + 1 and limit × window
-- < 2^51. A request that one limit denies is taken back from every limit,
-- so it consumes nothing.
-- A counter never holds 0 (a count that would is deleted), so a count equal
-- to the cost means the window is new.
local cost = tonumber(ARGV[1])
local n = #KEYS
if cost < 0 then
  for i = 1, n do
    local count = tonumber(redis.call('GET', KEYS[i]))
    if count and count + cost > 0 then
      redis.call('DECRBY', KEYS[i], -cost)
    elseif count then
      redis.call('DEL', KEYS[i])
    end
  end
  return 1
end
local out, over = {}, false
for i = 1, n do
  -- The window stays a string until needed: converting costs Redis time.
  local key, window = KEYS[i], ARGV[2 * i + 1]
  local count, ttl
  if cost > 0 then
    count = redis.call('INCRBY', key, cost)
  else
    count = tonumber(redis.call('GET', key)) or 0
  end
  if count == cost then
    if cost > 0 then redis.call('PEXPIRE', key, window) end
    ttl = tonumber(window)
  else
    ttl = redis.call('PTTL', key)
    if ttl == -1 then
      -- A counter that lost its expiry (PERSIST, a restore) gets one now,
      -- even on a denial: no key may live forever.
      redis.call('PEXPIRE', key, window)
      ttl = tonumber(window)
    elseif ttl == 0 then
      -- Under a millisecond left: report one, never an early reset.
      ttl = 1
    end
  end
  if count > tonumber(ARGV[2 * i]) then over = true end
  out[i] = count * (window + 1) + ttl
end
if over and cost > 0 then
  for i = 1, n do
    if out[i] < (cost + 1) * (ARGV[2 * i + 1] + 1) then
      redis.call('DEL', KEYS[i])
    else
      redis.call('DECRBY', KEYS[i], cost)
    end
  end
end
if n == 1 then return out[1] end
return out

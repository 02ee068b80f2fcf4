-- Fixed window on Redis's own clock: the counter is a plain integer and its
-- TTL is the window. The INCRBY that creates the key opens the window (and
-- gives it its expiry at once); the window ends when the key expires, so no
-- clock is read and app servers' clocks play no part.
-- KEYS: one counter per limit. ARGV[1]: cost (0: a peek, which counts
-- nothing; negative: a refund). Then per limit: limit, window (ms).
-- Returns per limit: the count with this cost, and the ms left in the window
-- (for a key that does not exist yet, the whole window). A request that one
-- limit denies is taken back from every limit, so it consumes nothing.
-- A counter never holds 0 (a count that would is deleted), so a count equal
-- to the cost means the window is new.
local cost = tonumber(ARGV[1])
if cost < 0 then
  for i = 1, #KEYS do
    local count = tonumber(redis.call('GET', KEYS[i]))
    if count and count + cost > 0 then
      redis.call('DECRBY', KEYS[i], -cost)
    elseif count then
      redis.call('DEL', KEYS[i])
    end
  end
  return {1}
end
local out, over = {}, false
for i = 1, #KEYS do
  local key, window = KEYS[i], tonumber(ARGV[2 * i + 1])
  local count, ttl = nil, window
  if cost > 0 then
    count = redis.call('INCRBY', key, cost)
  else
    count = tonumber(redis.call('GET', key)) or 0
  end
  if count == cost then
    if cost > 0 then redis.call('PEXPIRE', key, window) end
  else
    ttl = redis.call('PTTL', key)
    if ttl == -1 then
      -- A counter that lost its expiry (PERSIST, a restore) gets one now,
      -- even on a denial: no key may live forever.
      redis.call('PEXPIRE', key, window)
      ttl = window
    elseif ttl == 0 then
      -- Under a millisecond left: report one, never an early reset.
      ttl = 1
    end
  end
  if count > tonumber(ARGV[2 * i]) then over = true end
  out[2 * i - 1], out[2 * i] = count, ttl
end
if over and cost > 0 then
  for i = 1, #KEYS do
    if out[2 * i - 1] == cost then
      redis.call('DEL', KEYS[i])
    else
      redis.call('DECRBY', KEYS[i], cost)
    end
  end
end
return out

-- Sliding window counter on Redis's own clock: the count of the current
-- window, plus the previous window's count weighted by how much of it a
-- window sliding back from now still covers. No clock is read: each limit
-- has two plain integers, and Redis's expiries are the clock.
--   the counter: the current window's count; it expires one window after
--     its window ends, so that it still serves as the previous count then;
--   the previous count: written when the counter rolls over into a new
--     window, expiring with that window.
-- With the counter's PTTL t: t > window, its own window, which ends in
-- t − window ms; 0 ≤ t ≤ window, its window ended and its count is the
-- previous one of the window ending in t ms (rolled over when a request is
-- admitted there); −1, a new counter (or one that lost its expiry, read as
-- counting in full in a new window). Counts stay below 2^53: limit × window
-- < 2^51.
-- KEYS: per limit the counter and the previous count. ARGV[1]: cost (0: a
-- peek; negative: a refund). Then per limit: limit, window (ms).
-- Returns per limit the count and the previous count as found, without this
-- cost, and the ms left in the current window; the twin decides over them.
-- A request that one limit denies is taken back from every limit.
local cost = tonumber(ARGV[1])
local n = #KEYS / 2
if cost < 0 then
  for i = 1, n do
    local key = KEYS[2 * i - 1]
    local ttl = redis.call('PTTL', key)
    -- Only in the counter's own window: once it ended, its count is the
    -- previous one, and stays.
    if ttl > tonumber(ARGV[2 * i + 1]) or ttl == -1 then
      local count = tonumber(redis.call('GET', key))
      if count > 0 then redis.call('DECRBY', key, math.min(count, -cost)) end
    end
  end
  return 1
end
local out, state, over = {}, {}, false
for i = 1, n do
  local key, window = KEYS[2 * i - 1], tonumber(ARGV[2 * i + 1])
  local count, ttl
  if cost > 0 then
    count = redis.call('INCRBY', key, cost) - cost
    ttl = redis.call('PTTL', key)
  else
    count = tonumber(redis.call('GET', key))
    ttl = count and redis.call('PTTL', key) or -2
    count = count or 0
  end
  local c, p, left = count, 0, window
  if ttl > window then
    left = ttl - window
    p = tonumber(redis.call('GET', KEYS[2 * i])) or 0
  elseif ttl >= 0 then
    -- Under a millisecond left counts as one: never an early reset.
    c, p, left = 0, count, math.max(ttl, 1)
  else
    -- New (count 0; none, for a peek), or it lost its expiry: it gets one
    -- now, even on a denial, and so does a previous count it may have kept.
    p = tonumber(redis.call('GET', KEYS[2 * i])) or 0
    if count > 0 then redis.call('PEXPIRE', key, 2 * window) end
    if p > 0 then redis.call('PEXPIRE', KEYS[2 * i], window) end
  end
  state[i] = ttl
  if p * left + (c + cost) * window > tonumber(ARGV[2 * i]) * window then over = true end
  out[3 * i - 2], out[3 * i - 1], out[3 * i] = c, p, left
end
if cost == 0 then return out end
for i = 1, n do
  local key, ttl, window = KEYS[2 * i - 1], state[i], tonumber(ARGV[2 * i + 1])
  if over then
    -- Taken back: a counter this call created goes, others move back.
    if ttl == -1 and out[3 * i - 2] == 0 then
      redis.call('DEL', key)
    else
      redis.call('DECRBY', key, cost)
    end
  elseif ttl == -1 then
    if out[3 * i - 2] == 0 then redis.call('PEXPIRE', key, 2 * window) end
  elseif ttl <= window then
    -- The first admitted request of a new window rolls the counter over.
    local left = out[3 * i]
    redis.call('PSETEX', KEYS[2 * i], left, out[3 * i - 1])
    redis.call('PSETEX', key, left + window, cost)
  end
end
return out

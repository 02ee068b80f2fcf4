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
-- counting in full in a new window).
-- KEYS: per limit the counter and the previous count. ARGV[1]: cost (0: a
-- peek; negative: a refund). Then per limit: window (ms) and limit × window
-- (below 2^51, so Lua's doubles are exact).
-- Returns per limit the count with this cost, the previous count and the ms
-- left in the current window; the twin decides over them. A request that
-- one limit denies is taken back from every limit.
-- Turning text into a number costs Redis more than the rest of the
-- arithmetic, so the allowed path converts only the window and the limit:
-- the cost goes to INCRBY as it came, and the count comes back a number.
local n = #KEYS / 2
-- Compared as text: only a refund's cost starts with '-'.
if ARGV[1] < '0' then
  local cost = tonumber(ARGV[1])
  for i = 1, n do
    local key = KEYS[2 * i - 1]
    local ttl = redis.call('PTTL', key)
    -- Only in the counter's own window: once it ended, its count is the
    -- previous one, and stays.
    if ttl > tonumber(ARGV[2 * i]) or ttl == -1 then
      local count = tonumber(redis.call('GET', key))
      if count > 0 then redis.call('DECRBY', key, math.min(count, -cost)) end
    end
  end
  return 1
end
local peek = ARGV[1] == '0'
-- Sized for one limit: growing a table costs Redis more than filling it.
local out, over, ended = {0, 0, 0}, false, nil
for i = 1, n do
  local key, window = KEYS[2 * i - 1], tonumber(ARGV[2 * i])
  local count, ttl
  if peek then
    count = redis.call('GET', key)
    ttl = count and redis.call('PTTL', key) or -2
    count = tonumber(count) or 0
  else
    count = redis.call('INCRBY', key, ARGV[1])
    ttl = redis.call('PTTL', key)
  end
  local p, left = 0, window
  if ttl > window then
    left = ttl - window
    p = redis.call('GET', KEYS[2 * i])
    p = p and tonumber(p) or 0
  else
    ended = ended or {}
    ended[i] = ttl
    if ttl >= 0 then
      -- Its window ended: its count is the previous one. Under a
      -- millisecond left counts as one: never an early reset.
      local cost = tonumber(ARGV[1])
      count, p, left = cost, count - cost, math.max(ttl, 1)
    else
      -- New (only this cost; none, for a peek), or it lost its expiry: it
      -- gets one now, even on a denial, and so does a previous count it
      -- may have kept.
      p = tonumber(redis.call('GET', KEYS[2 * i])) or 0
      if count > tonumber(ARGV[1]) then redis.call('PEXPIRE', key, 2 * window) end
      if p > 0 then redis.call('PEXPIRE', KEYS[2 * i], window) end
    end
  end
  if p * left + count * window > tonumber(ARGV[2 * i + 1]) then over = true end
  local o = 3 * i
  out[o - 2], out[o - 1], out[o] = count, p, left
end
if peek or not (over or ended) then return out end
for i = 1, n do
  local key, ttl = KEYS[2 * i - 1], ended and ended[i]
  local fresh = ttl == -1 and out[3 * i - 2] == tonumber(ARGV[1])
  if over then
    -- Taken back: a counter this call created goes, others move back.
    if fresh then
      redis.call('DEL', key)
    else
      redis.call('DECRBY', key, ARGV[1])
    end
  elseif fresh then
    redis.call('PEXPIRE', key, 2 * ARGV[2 * i])
  elseif ttl and ttl >= 0 then
    -- The first admitted request of a new window rolls the counter over.
    local left = out[3 * i]
    redis.call('PSETEX', KEYS[2 * i], left, out[3 * i - 1])
    redis.call('PSETEX', key, left + ARGV[2 * i], ARGV[1])
  end
end
return out

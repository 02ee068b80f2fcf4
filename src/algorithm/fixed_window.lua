-- Fixed window. A hash: c = the count, e = when the window ends, in ms on the
-- clock of the `now` that opened it. The window opens at the key's first
-- request. Redis's expiry is always relative (PEXPIRE), never `now` as an
-- instant: an app clock behind Redis's would otherwise drop counters early.
local function decide(key, now_us, limit, window, burst, cost)
  local now = math.floor(now_us / 1000)
  local stored = redis.call('HMGET', key, 'c', 'e')
  local count, window_end = tonumber(stored[1]) or 0, tonumber(stored[2])
  if redis.call('PTTL', key) == -1 then
    -- A counter that lost its expiry (PERSIST, a restore) gets one now,
    -- even if this request is denied: no key may live forever.
    redis.call('PEXPIRE', key, window)
  end
  local opens = window_end == nil or window_end <= now
  if opens then
    count = 0
    window_end = now + window
  end
  local reset = (window_end - now) * 1000
  if count + cost > limit then
    return false, math.max(limit - count, 0), reset, reset, nil
  end
  return true, limit - count - cost, reset, 0, {opens, count + cost, window_end, cost, window}
end

local function commit(key, state)
  if state[1] then
    redis.call('HSET', key, 'c', state[2], 'e', state[3])
    redis.call('PEXPIRE', key, state[5])
  else
    -- The window is open: only the count moves, the expiry stays.
    redis.call('HINCRBY', key, 'c', state[4])
  end
end

local function refund(key, now_us, limit, window, burst, cost)
  local stored = redis.call('HMGET', key, 'c', 'e')
  local count, window_end = tonumber(stored[1]), tonumber(stored[2])
  if count and count > 0 and window_end and window_end > math.floor(now_us / 1000) then
    redis.call('HINCRBY', key, 'c', -math.min(cost, count))
  end
end

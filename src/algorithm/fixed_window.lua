-- Fixed window. The counter's value is the count; its expiry is the end of
-- the window, which opens at the key's first request.
local function decide(key, now_us, limit, window, burst, cost)
  local now = math.floor(now_us / 1000)
  local count = tonumber(redis.call('GET', key) or 0)
  local window_end = redis.call('PEXPIRETIME', key)
  if window_end == -1 then
    -- A counter that lost its expiry (PERSIST, a restore) gets one now,
    -- even if this request is denied: no key may live forever.
    window_end = now + window
    redis.call('PEXPIREAT', key, window_end)
  end
  local opens = window_end <= now
  if opens then
    count = 0
    window_end = now + window
  end
  local reset = (window_end - now) * 1000
  if count + cost > limit then
    return false, math.max(limit - count, 0), reset, reset, nil
  end
  return true, limit - count - cost, reset, 0, {opens, count + cost, window_end, cost}
end

local function commit(key, state)
  if state[1] then
    redis.call('SET', key, state[2], 'PXAT', state[3])
  else
    -- The window is open: INCRBY keeps its expiry and costs Redis less.
    redis.call('INCRBY', key, state[4])
  end
end

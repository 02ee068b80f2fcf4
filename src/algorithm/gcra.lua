-- GCRA (generic cell rate algorithm): a token bucket of `burst` tokens
-- refilled at the rate, kept as one number, the theoretical arrival time
-- (TAT) in microseconds. Each request pushes the TAT one emission interval
-- further; a request is admitted while the TAT stays within `burst`
-- intervals of now. Values stay below 2^53, so Lua's doubles are exact.
local function decide(key, now, limit, window, burst, cost)
  local interval = math.floor((window * 1000 + limit - 1) / limit)
  local tolerance = interval * burst
  local stored = tonumber(redis.call('GET', key))
  local tat = math.max(stored or 0, now)
  local new_tat = tat + cost * interval
  local allow_at = new_tat - tolerance
  if allow_at > now then
    -- A denial writes nothing, but a TAT that lost its expiry gets one back.
    if stored and redis.call('PTTL', key) == -1 then
      redis.call('PEXPIRE', key, math.floor((tat - now + 999) / 1000))
    end
    local remaining = math.floor(math.max(now + tolerance - tat, 0) / interval)
    return false, remaining, tat - now, allow_at - now, nil
  end
  local remaining = math.floor((now + tolerance - new_tat) / interval)
  return true, remaining, new_tat - now, 0, {new_tat, new_tat - now}
end

local function commit(key, state)
  -- Once the TAT has passed, the key means the same as no key. The expiry is
  -- relative, so an app clock behind Redis's cannot drop the TAT early.
  redis.call('SET', key, state[1], 'PX', math.floor((state[2] + 999) / 1000))
end

local function refund(key, now, limit, window, burst, cost)
  local tat = tonumber(redis.call('GET', key))
  if not tat or tat <= now then return end
  local interval = math.floor((window * 1000 + limit - 1) / limit)
  local new_tat = math.max(tat - cost * interval, now)
  if new_tat > now then
    redis.call('SET', key, new_tat, 'PX', math.floor((new_tat - now + 999) / 1000))
  else
    redis.call('DEL', key)
  end
end

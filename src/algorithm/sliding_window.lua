-- Sliding window counter. Windows are aligned to the epoch; the count of the
-- previous window is weighted by how much of it still overlaps the sliding
-- window. The key is a hash: w = window index, c = its count, p = the
-- previous window's count. All arithmetic is on integers below 2^53, so
-- Lua's doubles and the Rust twin's u64 agree exactly.
local function decide(key, now_us, limit, window, burst, cost)
  local now = math.floor(now_us / 1000)
  local stored = redis.call('HMGET', key, 'w', 'c', 'p')
  local w, c, p = tonumber(stored[1]), tonumber(stored[2]) or 0, tonumber(stored[3]) or 0
  if w and redis.call('PTTL', key) == -1 then
    -- A counter that lost its expiry gets one, even on a denial.
    redis.call('PEXPIRE', key, 2 * window)
  end
  -- A caller whose clock is behind the one that opened window w counts in
  -- w, at its start, and waits the difference too: a newer window is never
  -- reset by an older clock.
  local behind = 0
  if w and w * window > now then behind = w * window - now end
  now = now + behind
  local index = math.floor(now / window)
  local elapsed = now - index * window
  if w == index - 1 then
    p, c = c, 0
  elseif w ~= index then
    p, c = 0, 0
  end
  local weight = window - elapsed
  local used = p * weight + c * window
  local capacity = limit * window
  local full_reset = (index + 2) * window - now
  if used + cost * window <= capacity then
    local remaining = math.floor((capacity - used - cost * window) / window)
    return true, remaining, (full_reset + behind) * 1000, 0, {index, c + cost, p, full_reset, w == index, cost}
  end
  local reset = 0
  if c > 0 then reset = full_reset elseif p > 0 then reset = window - elapsed end
  -- Earliest moment the weighted count leaves room for this cost: later in
  -- this window as the previous one fades, or else in the next one.
  local retry
  local room = limit - c - cost
  if room >= 0 and p > 0 then
    local at = window - math.floor(room * window / p)
    if at < window then retry = at - elapsed end
  end
  if retry == nil then
    local at = 0
    if c > 0 then at = math.max(0, window - math.floor((limit - cost) * window / c)) end
    retry = window - elapsed + at
  end
  return false, math.floor(math.max(capacity - used, 0) / window), (reset + behind) * 1000, (retry + behind) * 1000, nil
end

local function commit(key, state)
  if state[5] then
    -- Same window: only its count moves, and the expiry stays.
    redis.call('HINCRBY', key, 'c', state[6])
  else
    redis.call('HSET', key, 'w', state[1], 'c', state[2], 'p', state[3])
    -- Two windows on, neither count matters any more. Relative, so that an
    -- app clock behind Redis's cannot drop the counts early.
    redis.call('PEXPIRE', key, state[4])
  end
end

local function refund(key, now_us, limit, window, burst, cost)
  local stored = redis.call('HMGET', key, 'w', 'c')
  local w, c = tonumber(stored[1]), tonumber(stored[2])
  -- From the newest window while its counts still matter; a refund that
  -- crosses a boundary gives back in the newer window, never more.
  if w and c and c > 0 and (w + 2) * window > math.floor(now_us / 1000) then
    redis.call('HINCRBY', key, 'c', -math.min(cost, c))
  end
end

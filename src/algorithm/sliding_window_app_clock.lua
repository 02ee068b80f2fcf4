-- Sliding window on the application's clock (`Clock::App`): the twin's state
-- in a hash, c = the current window's count, p = the previous window's,
-- e = when the current window ends, in ms on the clock of the `now` that
-- opened it. As on Redis's clock, a window opens at its first request and
-- the next one follows on from it. Redis's expiry is only ever relative
-- (PEXPIRE), never `now` as an instant: an app clock behind Redis's would
-- otherwise drop counters early.
-- KEYS: one counter per limit. ARGV[1]: now in microseconds since the Unix
-- epoch. ARGV[2]: cost (0: a peek; negative: a refund). Then per limit:
-- limit, window (ms). Returns per limit the count with this cost, the
-- previous count and the ms left in the current window, which a
-- caller whose clock is behind the one that opened it sees longer than the
-- window.
local now = math.floor(tonumber(ARGV[1]) / 1000)
local cost = tonumber(ARGV[2])
local n = #KEYS
if cost < 0 then
  for i = 1, n do
    local stored = redis.call('HMGET', KEYS[i], 'c', 'e')
    local count, window_end = tonumber(stored[1]), tonumber(stored[2])
    -- Only in the counter's own window: once it ended, its count is the
    -- previous one, and stays.
    if count and window_end and window_end > now and count > 0 then
      redis.call('HINCRBY', KEYS[i], 'c', -math.min(count, -cost))
    end
  end
  return 1
end
local out, over, ends, rolled = {}, false, {}, {}
for i = 1, n do
  local key, window = KEYS[i], tonumber(ARGV[2 * i + 2])
  local stored = redis.call('HMGET', key, 'c', 'p', 'e')
  local c, p, e = tonumber(stored[1]) or 0, tonumber(stored[2]) or 0, tonumber(stored[3])
  if e and redis.call('PTTL', key) == -1 then
    -- A counter that lost its expiry gets one now, even on a denial.
    redis.call('PEXPIRE', key, 2 * window)
  end
  if e == nil or e + window <= now then
    c, p, e, rolled[i] = 0, 0, now + window, true
  elseif e <= now then
    c, p, e, rolled[i] = 0, c, e + window, true
  end
  ends[i] = e
  -- A caller whose clock is behind counts at the window's start.
  local weight = math.min(e - now, window)
  if p * weight + (c + cost) * window > tonumber(ARGV[2 * i + 1]) * window then over = true end
  out[3 * i - 2], out[3 * i - 1], out[3 * i] = c + cost, p, e - now
end
if over or cost == 0 then return out end
for i = 1, n do
  if rolled[i] then
    local window = tonumber(ARGV[2 * i + 2])
    redis.call('HSET', KEYS[i], 'c', cost, 'p', out[3 * i - 1], 'e', ends[i])
    -- One window after this one, neither count matters any more.
    redis.call('PEXPIRE', KEYS[i], ends[i] - now + window)
  else
    redis.call('HINCRBY', KEYS[i], 'c', cost)
  end
end
return out

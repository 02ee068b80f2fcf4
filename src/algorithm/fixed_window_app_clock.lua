-- Fixed window on the application's clock (`Clock::App`): a hash, c = the
-- count, e = when the window ends, in ms on the clock of the `now` that
-- opened it. Redis's expiry is only ever relative (PEXPIRE), never `now` as
-- an instant: an app clock behind Redis's would otherwise drop counters early.
-- KEYS: one counter per limit. ARGV[1]: now in microseconds since the Unix
-- epoch. ARGV[2]: cost (0: a peek; negative: a refund). Then per limit:
-- limit, window (ms). Returns per limit the count with this cost and the ms
-- left in the window, which a caller whose clock is behind the one that
-- opened it sees longer than the window (so they are not packed in one).
local now = math.floor(tonumber(ARGV[1]) / 1000)
local cost = tonumber(ARGV[2])
local n = #KEYS
if cost < 0 then
  for i = 1, n do
    local stored = redis.call('HMGET', KEYS[i], 'c', 'e')
    local count, window_end = tonumber(stored[1]), tonumber(stored[2])
    if count and window_end and window_end > now then
      if count + cost > 0 then
        redis.call('HINCRBY', KEYS[i], 'c', cost)
      else
        redis.call('DEL', KEYS[i])
      end
    end
  end
  return 1
end
local out, over, ends = {}, false, {}
for i = 1, n do
  local key, window = KEYS[i], tonumber(ARGV[2 * i + 2])
  local stored = redis.call('HMGET', key, 'c', 'e')
  local count, window_end = tonumber(stored[1]) or 0, tonumber(stored[2])
  if window_end and redis.call('PTTL', key) == -1 then
    -- A counter that lost its expiry gets one now, even on a denial.
    redis.call('PEXPIRE', key, window)
  end
  if window_end == nil or window_end <= now then
    count, window_end = 0, nil
  end
  ends[i] = window_end
  if count + cost > tonumber(ARGV[2 * i + 1]) then over = true end
  out[2 * i - 1], out[2 * i] = count + cost, window_end and window_end - now or window
end
if not over and cost > 0 then
  for i = 1, n do
    if ends[i] then
      -- The window is open: only the count moves, the expiry stays.
      redis.call('HINCRBY', KEYS[i], 'c', cost)
    else
      local window = tonumber(ARGV[2 * i + 2])
      redis.call('HSET', KEYS[i], 'c', cost, 'e', now + window)
      redis.call('PEXPIRE', KEYS[i], window)
    end
  end
end
return out

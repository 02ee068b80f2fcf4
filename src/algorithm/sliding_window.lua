-- Sliding window counter. Windows are aligned to the epoch; the count of the
-- previous window is weighted by how much of it still overlaps the sliding
-- window. The key is a hash: w = window index, c = its count, p = the
-- previous window's count. All arithmetic is on integers below 2^53, so
-- Lua's doubles and the Rust twin's u64 agree exactly.
-- KEYS: one counter per limit. ARGV[1]: now in microseconds since the Unix
-- epoch, or -1 to read Redis's clock. ARGV[2]: cost (0: a peek; negative: a
-- refund). Then per limit: limit, window (ms).
-- Returns {1 if every limit admits the request else 0, now (ms), then per
-- limit w (-1: none), c, p as found}; the app computes the headers from them.
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = t[1] * 1000 + math.floor(t[2] / 1000)
else
  now = math.floor(now / 1000)
end
local cost = tonumber(ARGV[2])
if cost < 0 then
  for i = 1, #KEYS do
    local stored = redis.call('HMGET', KEYS[i], 'w', 'c')
    local w, c = tonumber(stored[1]), tonumber(stored[2])
    -- From the newest window while its counts still matter; a refund that
    -- crosses a boundary gives back in the newer window, never more.
    if w and c and c > 0 and (w + 2) * tonumber(ARGV[2 * i + 2]) > now then
      redis.call('HINCRBY', KEYS[i], 'c', -math.min(-cost, c))
    end
  end
  return {1}
end
local out, opens = {1, now}, {}
for i = 1, #KEYS do
  local key, window = KEYS[i], tonumber(ARGV[2 * i + 2])
  local stored = redis.call('HMGET', key, 'w', 'c', 'p')
  local w, c, p = tonumber(stored[1]), tonumber(stored[2]) or 0, tonumber(stored[3]) or 0
  out[3 * i], out[3 * i + 1], out[3 * i + 2] = w or -1, c, p
  if w and redis.call('PTTL', key) == -1 then
    -- A counter that lost its expiry gets one, even on a denial.
    redis.call('PEXPIRE', key, 2 * window)
  end
  -- A caller whose clock is behind the one that opened window w counts in
  -- w, at its start: a newer window is never reset by an older clock.
  local at = now
  if w and w * window > now then at = w * window end
  local index = math.floor(at / window)
  if w ~= index then
    if w == index - 1 then p = c else p = 0 end
    c = 0
    opens[i] = index
  end
  if p * (window - at + index * window) + (c + cost) * window > tonumber(ARGV[2 * i + 1]) * window then
    out[1] = 0
  end
end
if out[1] == 0 or cost == 0 then return out end
for i = 1, #KEYS do
  local index = opens[i]
  if index then
    local window = tonumber(ARGV[2 * i + 2])
    local w, c = out[3 * i], out[3 * i + 1]
    local p = 0
    if w == index - 1 then p = c end
    redis.call('HSET', KEYS[i], 'w', index, 'c', cost, 'p', p)
    -- Two windows on, neither count matters any more. Relative, so that an
    -- app clock behind Redis's cannot drop the counts early.
    redis.call('PEXPIRE', KEYS[i], (index + 2) * window - now)
  else
    -- Same window: only its count moves, and the expiry stays.
    redis.call('HINCRBY', KEYS[i], 'c', cost)
  end
end
return out

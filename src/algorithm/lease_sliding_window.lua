-- Lease mode, sliding window: the plain sliding window's counters (a hash:
-- w = window index, c = its count, p = the previous window's), c counting the
-- units granted to app servers, which spend them in-process until the
-- window ends. One call gives back what an app server did not spend,
-- crediting a counter only while its window is still the one the units
-- were granted in, then grants a slice capped by what every limit's weighted
-- room has left, all or nothing: p × overlap + c never exceeds the limit.
-- KEYS: one counter per limit.
-- ARGV[1]: cost, the units the request needs (0: a give-back only).
-- ARGV[2]: want, the slice asked for (at least the cost).
-- ARGV[3]: instances: a grant is at most what is left divided by this.
-- ARGV[4]: units given back (0: none). Then per limit: limit, window (ms),
-- and the index of the window the given-back units came from (0: none).
-- Returns {granted, now (ms), then per limit: units credited, then w (-1:
-- none), c, p as found after the give-back, before the grant}.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local cost, want = tonumber(ARGV[1]), tonumber(ARGV[2])
local instances, back = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {0, now}
for i = 1, #KEYS do
  local credited, index = 0, tonumber(ARGV[3 * i + 4])
  local window = tonumber(ARGV[3 * i + 3])
  if back > 0 and index > 0 then
    local stored = redis.call('HMGET', KEYS[i], 'w', 'c')
    local w, c = tonumber(stored[1]), tonumber(stored[2])
    -- Only while that window is the current one: once it has rolled over,
    -- its count is the next window's weight, and stays as granted.
    local at = now
    if w and w * window > now then at = w * window end
    if w == index and math.floor(at / window) == index and c and c > 0 then
      credited = math.min(back, c)
      redis.call('HINCRBY', KEYS[i], 'c', -credited)
    end
  end
  out[4 * i - 1], out[4 * i], out[4 * i + 1], out[4 * i + 2] = credited, -1, 0, 0
end
if cost <= 0 then return out end
local room, opens = nil, {}
for i = 1, #KEYS do
  local key, limit, window = KEYS[i], tonumber(ARGV[3 * i + 2]), tonumber(ARGV[3 * i + 3])
  local stored = redis.call('HMGET', key, 'w', 'c', 'p')
  local w, c, p = tonumber(stored[1]), tonumber(stored[2]) or 0, tonumber(stored[3]) or 0
  out[4 * i], out[4 * i + 1], out[4 * i + 2] = w or -1, c, p
  if w and redis.call('PTTL', key) == -1 then
    -- A counter that lost its expiry gets one, even on a denial.
    redis.call('PEXPIRE', key, 2 * window)
  end
  -- As the plain script: a clock behind the one that opened window w
  -- counts in w, at its start.
  local at = now
  if w and w * window > now then at = w * window end
  local index = math.floor(at / window)
  if w ~= index then
    if w == index - 1 then p = c else p = 0 end
    c = 0
    opens[i] = index
  end
  -- The most units g with p × (window − elapsed) + (c + g) × window within
  -- limit × window.
  local left = math.floor((limit * window - p * (window - at + index * window)) / window) - c
  if room == nil or left < room then room = left end
end
local grant = 0
if room >= cost then
  grant = math.max(cost, math.min(want, math.floor(room / instances)))
  if grant > room then grant = room end
end
if grant > 0 then
  for i = 1, #KEYS do
    local index = opens[i]
    if index then
      local window = tonumber(ARGV[3 * i + 3])
      local w, c = out[4 * i], out[4 * i + 1]
      local p = 0
      if w == index - 1 then p = c end
      redis.call('HSET', KEYS[i], 'w', index, 'c', grant, 'p', p)
      redis.call('PEXPIRE', KEYS[i], (index + 2) * window - now)
    else
      redis.call('HINCRBY', KEYS[i], 'c', grant)
    end
  end
end
out[1] = grant
return out

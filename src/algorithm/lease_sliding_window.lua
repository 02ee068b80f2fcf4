-- Lease mode, sliding window on Redis's clock: the plain sliding window's
-- counters (per limit the counter, whose expiry is one window after its
-- window's end, and the previous count; see sliding_window.lua), the counter
-- counting the units granted to app servers, which spend them in-process
-- until the window ends. One call gives back what an app server did not
-- spend, crediting a counter only while its window is still the one the
-- units were granted in, then grants a slice capped by what every limit's
-- weighted room has left, all or nothing: p × overlap + c never exceeds the
-- limit.
-- KEYS: per limit the counter and the previous count.
-- ARGV[1]: cost, the units the request needs (0: a give-back only).
-- ARGV[2]: want, the slice asked for (at least the cost).
-- ARGV[3]: instances: a grant is at most what is left divided by this.
-- ARGV[4]: units given back (0: none). Then per limit: limit, window (ms),
-- and the window the given-back units came from: the counter's expiry as
-- PEXPIRETIME gave it at the grant (0: none).
-- Returns {granted, then per limit: units credited, the count and the
-- previous count as found after the give-back, before the grant, the ms
-- left in the window, and the counter's expiry (PEXPIRETIME; 0: no
-- counter)}.
local cost, want = tonumber(ARGV[1]), tonumber(ARGV[2])
local instances, back = tonumber(ARGV[3]), tonumber(ARGV[4])
local n = #KEYS / 2
local out = {0}
for i = 1, n do
  local key, credited, at = KEYS[2 * i - 1], 0, tonumber(ARGV[3 * i + 4])
  -- The expiry names the window, and only while the window runs (PTTL
  -- above one window): once it has ended, its count is the next window's
  -- weight and stays as granted; a rolled-over counter has another expiry.
  if back > 0 and at > 0 and redis.call('PEXPIRETIME', key) == at
      and redis.call('PTTL', key) > tonumber(ARGV[3 * i + 3]) then
    local count = tonumber(redis.call('GET', key))
    credited = math.min(back, count)
    redis.call('DECRBY', key, credited)
  end
  out[5 * i - 3], out[5 * i - 2], out[5 * i - 1], out[5 * i], out[5 * i + 1] = credited, 0, 0, 0, 0
end
if cost <= 0 then return out end
local room, state, counts = nil, {}, {}
for i = 1, n do
  local key, limit, window = KEYS[2 * i - 1], tonumber(ARGV[3 * i + 2]), tonumber(ARGV[3 * i + 3])
  local count = tonumber(redis.call('GET', key))
  local ttl = count and redis.call('PTTL', key) or -2
  count = count or 0
  local c, p, left = count, 0, window
  if ttl > window then
    left = ttl - window
    p = tonumber(redis.call('GET', KEYS[2 * i])) or 0
  elseif ttl >= 0 then
    c, p, left = 0, count, math.max(ttl, 1)
  else
    -- As the plain script: none, or it lost its expiry and gets one now.
    p = tonumber(redis.call('GET', KEYS[2 * i])) or 0
    if ttl == -1 then redis.call('PEXPIRE', key, 2 * window) end
    if p > 0 then redis.call('PEXPIRE', KEYS[2 * i], window) end
  end
  state[i], counts[i] = ttl, count
  out[5 * i - 2], out[5 * i - 1], out[5 * i] = c, p, left
  -- The most units g with p × left + (c + g) × window within limit × window.
  local units = math.floor((limit * window - p * left) / window) - c
  if room == nil or units < room then room = units end
end
local grant = 0
if room >= cost then
  grant = math.max(cost, math.min(want, math.floor(room / instances)))
  if grant > room then grant = room end
end
for i = 1, n do
  local key, ttl, window = KEYS[2 * i - 1], state[i], tonumber(ARGV[3 * i + 3])
  if grant > 0 then
    if ttl > window or ttl == -1 then
      redis.call('INCRBY', key, grant)
    elseif ttl >= 0 then
      -- The first grant of a new window rolls the counter over.
      local left = out[5 * i]
      redis.call('PSETEX', KEYS[2 * i], left, counts[i])
      redis.call('PSETEX', key, left + window, grant)
    else
      redis.call('PSETEX', key, 2 * window, grant)
    end
  end
  if grant > 0 or ttl ~= -2 then out[5 * i + 1] = redis.call('PEXPIRETIME', key) end
end
out[1] = grant
return out

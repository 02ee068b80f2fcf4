-- Lease mode, fixed window on Redis's clock: the plain fixed window's
-- counters (an integer whose TTL is the window), counting the units granted
-- to app servers, which spend them in-process. One call gives back what an
-- app server did not spend, crediting a counter only if it is still the
-- window the units were granted in, then grants a slice capped by what every
-- limit has left, all or nothing: a counter never exceeds its limit.
-- KEYS: one counter per limit.
-- ARGV[1]: cost, the units the request needs (0: a give-back only).
-- ARGV[2]: want, the slice asked for (at least the cost).
-- ARGV[3]: instances: a grant is at most what is left divided by this.
-- ARGV[4]: units given back (0: none). Then per limit: limit, window (ms),
-- and the window the given-back units came from: the counter's expiry as
-- PEXPIRETIME gave it at the grant (0: none).
-- Returns {granted, then per limit: units credited, the count (with the
-- grant; 0: no counter), the ms left in the window (the whole window for no
-- counter) and its expiry (PEXPIRETIME; 0: no counter)}.
local cost, want = tonumber(ARGV[1]), tonumber(ARGV[2])
local instances, back = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {0}
for i = 1, #KEYS do
  local credited, at = 0, tonumber(ARGV[3 * i + 4])
  -- The expiry names the window: a counter that expired and was opened
  -- again has another (at least a window later), so a late give-back
  -- matches nothing.
  if back > 0 and at > 0 and redis.call('PEXPIRETIME', KEYS[i]) == at then
    local count = tonumber(redis.call('GET', KEYS[i]))
    if count and count > back then
      redis.call('DECRBY', KEYS[i], back)
      credited = back
    elseif count then
      -- A counter never holds 0: one of 0 would read as a new window.
      redis.call('DEL', KEYS[i])
      credited = count
    end
  end
  out[4 * i - 2], out[4 * i - 1], out[4 * i], out[4 * i + 1] = credited, 0, 0, 0
end
if cost <= 0 then return out end
local counts, room = {}, nil
for i = 1, #KEYS do
  counts[i] = tonumber(redis.call('GET', KEYS[i])) or 0
  local left = tonumber(ARGV[3 * i + 2]) - counts[i]
  if room == nil or left < room then room = left end
end
local grant = 0
if room >= cost then
  grant = math.max(cost, math.min(want, math.floor(room / instances)))
  if grant > room then grant = room end
end
for i = 1, #KEYS do
  local key, window = KEYS[i], tonumber(ARGV[3 * i + 3])
  local count, ttl, at = counts[i], window, 0
  if grant > 0 then count = redis.call('INCRBY', key, grant) end
  if count > 0 then
    if counts[i] == 0 then
      -- The grant opened the window.
      redis.call('PEXPIRE', key, window)
    else
      ttl = redis.call('PTTL', key)
      if ttl == -1 then
        -- A counter that lost its expiry gets one, even on a denial.
        redis.call('PEXPIRE', key, window)
        ttl = window
      elseif ttl == 0 then
        -- Under a millisecond left: report one, never an early reset.
        ttl = 1
      end
    end
    at = redis.call('PEXPIRETIME', key)
  end
  out[4 * i - 1], out[4 * i], out[4 * i + 1] = count, ttl, at
end
out[1] = grant
return out

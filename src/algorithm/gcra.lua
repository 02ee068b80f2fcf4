-- GCRA (generic cell rate algorithm): a token bucket of `burst` tokens
-- refilled at the rate, kept as one number, the theoretical arrival time
-- (TAT) in microseconds. Each request pushes the TAT `cost` emission
-- intervals further; a request is admitted while the TAT stays within the
-- tolerance (`burst` intervals) of now. A TAT in the past means the same as
-- no key. Values stay below 2^53, so Lua's doubles are exact.
-- KEYS: one TAT per limit. ARGV[1]: now in microseconds since the Unix
-- epoch, or -1 to read Redis's clock. ARGV[2]: cost (0: a peek; negative: a
-- refund). Then per limit: the emission interval and the tolerance (µs).
-- Returns {1 if every limit admits the request else 0, now, then per limit
-- the TAT found (0: none)}; the app computes the headers from them.
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = t[1] * 1000000 + t[2]
end
local cost = tonumber(ARGV[2])
if cost < 0 then
  for i = 1, #KEYS do
    local tat = tonumber(redis.call('GET', KEYS[i]))
    if tat and tat > now then
      local back = tat + cost * ARGV[2 * i + 1]
      if back > now then
        -- Only moves back, so the key's expiry stays long enough.
        redis.call('INCRBY', KEYS[i], back - tat)
      else
        redis.call('DEL', KEYS[i])
      end
    end
  end
  return {1}
end
local out = {1, now}
for i = 1, #KEYS do
  local stored = tonumber(redis.call('GET', KEYS[i])) or 0
  out[i + 2] = stored
  local ahead = 0
  if stored > now then ahead = stored - now end
  if ahead + cost * ARGV[2 * i + 1] > tonumber(ARGV[2 * i + 2]) then
    out[1] = 0
    -- A denial writes nothing, but a TAT that lost its expiry gets one back.
    if ahead > 0 and redis.call('PTTL', KEYS[i]) == -1 then
      redis.call('PEXPIRE', KEYS[i], math.floor(ahead / 1000) + 1)
    end
  end
end
if out[1] == 0 or cost == 0 then return out end
for i = 1, #KEYS do
  local key, stored = KEYS[i], out[i + 2]
  local tat = now
  if stored > now then tat = stored end
  tat = tat + cost * ARGV[2 * i + 1]
  -- The key must outlive the TAT. It is given the tolerance on top, so that
  -- a busy key renews its expiry about once a tolerance, not on every
  -- request: the TAT itself is updated in place.
  local needed = tat - now
  if stored == 0 then
    redis.call('PSETEX', key, math.floor((needed + ARGV[2 * i + 2]) / 1000) + 1, tat)
  else
    redis.call('INCRBY', key, tat - stored)
    -- PTTL is whole ms: a ms of margin, so the key never expires before it.
    if redis.call('PTTL', key) * 1000 < needed + 1000 then
      redis.call('PEXPIRE', key, math.floor((needed + ARGV[2 * i + 2]) / 1000) + 1)
    end
  end
end
return out

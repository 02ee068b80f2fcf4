-- GCRA (generic cell rate algorithm) on Redis's own clock: a token bucket
-- of `burst` tokens refilled at the rate, kept as the theoretical arrival
-- time (TAT). Each request pushes the TAT `cost` emission intervals further;
-- it is admitted while the TAT stays within the tolerance (`burst`
-- intervals) of now. A TAT in the past means the same as no key.
-- The key holds the TAT as the microseconds from it to the key's own expiry:
-- what a request needs is how far the TAT lies ahead of now, and that is
-- PTTL × 1000 − value, so no clock is read: Redis's expiry is the clock, to
-- the millisecond, and the value moves in place (INCRBY). Values stay below
-- 2^53, so Lua's doubles are exact.
-- KEYS: one bucket per limit. ARGV, per limit: the increment (cost ×
-- emission interval, µs; 0: a peek; negative: a refund) and the tolerance.
-- Returns per limit how far the TAT lay ahead of now (µs), or −1 − that for
-- a limit that denies; one limit's reply is that integer alone.
local n, out, denied = #KEYS, {}, 0
-- A refund's increments are negative: compared as text, no conversion.
local refund = ARGV[1] < '0'
for i = 1, n do
  local key, inc, tolerance = KEYS[i], tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local d = tonumber(redis.call('GET', key))
  local ahead, ttl = 0, 0
  if d then
    ttl = redis.call('PTTL', key)
    if ttl < 0 then
      -- It lost its expiry, and with it the TAT: read as a full bucket,
      -- the strictest reading, and given an expiry below.
      ahead = tolerance
    elseif ttl * 1000 > d then
      ahead = ttl * 1000 - d
    end
  end
  if refund then
    if ttl > 0 and ahead > 0 then
      if ahead + inc > 0 then
        redis.call('INCRBY', key, -inc)
      else
        redis.call('DEL', key)
      end
    end
  elseif ahead + inc > tolerance then
    out[i] = -ahead - 1
    if denied == 0 then denied = i end
    if ttl < 0 then
      redis.call('PSETEX', key, math.floor(ahead / 1000) + 1, 0)
    end
  else
    out[i] = ahead
    if denied == 0 and inc > 0 then
      local new = ahead + inc
      if ttl * 1000 >= new then
        redis.call('INCRBY', key, ttl * 1000 - new - d)
      else
        -- The key would expire before its TAT: a new expiry, with the
        -- tolerance on top, so that a busy key renews it about once a
        -- tolerance rather than on every request.
        local px = math.floor((new + tolerance) / 1000) + 1
        redis.call('PSETEX', key, px, px * 1000 - new)
      end
    end
  end
end
if refund then return 1 end
-- Limits before the one that denied were counted: taken back (a TAT that
-- was in the past goes back to no key, which means the same).
for i = 1, denied - 1 do
  if out[i] == 0 then
    redis.call('DEL', KEYS[i])
  else
    redis.call('INCRBY', KEYS[i], ARGV[2 * i - 1])
  end
end
if n == 1 then return out[1] end
return out

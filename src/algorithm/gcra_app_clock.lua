-- GCRA on the application's clock (`Clock::App`): as gcra.lua, but the key
-- holds the TAT itself, in microseconds since the Unix epoch on the app's
-- clock, and expires (relatively, so that an app clock behind Redis's
-- cannot drop it early) at most one tolerance after it has passed.
-- KEYS: one TAT per limit. ARGV[1]: now in microseconds since the Unix
-- epoch. Then per limit: the increment (cost × emission interval, µs; 0: a
-- peek; negative: a refund) and the tolerance. Returns what gcra.lua returns.
local now = tonumber(ARGV[1])
local n, out, denied = #KEYS, {}, 0
local refund = ARGV[2] < '0'
for i = 1, n do
  local key, inc, tolerance = KEYS[i], tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key)) or 0
  local ahead = 0
  if tat > now then ahead = tat - now end
  if refund then
    if ahead > 0 then
      if ahead + inc > 0 then
        -- Only moves back, so the key's expiry stays long enough.
        redis.call('INCRBY', key, inc)
      else
        redis.call('DEL', key)
      end
    end
  elseif ahead + inc > tolerance then
    out[i] = -ahead - 1
    if denied == 0 then denied = i end
    -- A denial writes nothing, but a TAT that lost its expiry gets one back.
    if ahead > 0 and redis.call('PTTL', key) == -1 then
      redis.call('PEXPIRE', key, math.floor(ahead / 1000) + 1)
    end
  else
    out[i] = ahead
    if denied == 0 and inc > 0 then
      local new = ahead + inc
      if tat == 0 then
        redis.call('PSETEX', key, math.floor((new + tolerance) / 1000) + 1, now + new)
      else
        redis.call('INCRBY', key, now + new - tat)
        -- PTTL is whole ms: a ms of margin, so the key never expires first.
        if redis.call('PTTL', key) * 1000 < new + 1000 then
          redis.call('PEXPIRE', key, math.floor((new + tolerance) / 1000) + 1)
        end
      end
    end
  end
end
if refund then return 1 end
for i = 1, denied - 1 do
  if out[i] == 0 then
    redis.call('DEL', KEYS[i])
  else
    redis.call('DECRBY', KEYS[i], ARGV[2 * i])
  end
end
if n == 1 then return out[1] end
return out

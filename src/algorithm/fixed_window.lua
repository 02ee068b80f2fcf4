-- Fixed window. KEYS[1]: the counter. ARGV: limit, window (ms), cost.
-- Returns {allowed (1 or 0), count after this request, ms until reset}.
-- A denied request adds nothing, so the counter never exceeds the limit.
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
local ttl = redis.call('PTTL', KEYS[1])
local allowed = count + cost <= limit
if allowed then
  count = redis.call('INCRBY', KEYS[1], cost)
end
-- A new counter, or one that lost its expiry, gets the window's: no key is
-- ever left to live forever.
if ttl < 0 and count > 0 then
  redis.call('PEXPIRE', KEYS[1], window)
  ttl = window
end
return {allowed and 1 or 0, count, math.max(ttl, 0)}

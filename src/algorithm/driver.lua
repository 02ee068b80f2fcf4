
-- The driver, shared by every algorithm: one call decides all the limits of
-- a policy, all or nothing.
-- KEYS: one counter per limit. ARGV[1]: now in microseconds since the Unix
-- epoch, or -1 to read Redis's clock (one clock for all app servers).
-- ARGV[2]: cost. Then per limit: limit, window (ms), burst.
-- Returns {all allowed, then per limit: allowed, remaining, reset (us), retry (us)}.
-- A negative cost is a refund: a later layer refused a request that these
-- limits admitted, so each limit gives the cost back. Returns {1}.
-- A cost of 0 is a peek: every limit is decided and the answer returned as
-- for a check, but nothing is committed (operators read counters so).
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local cost = tonumber(ARGV[2])
if cost < 0 then
  for i = 1, #KEYS do
    local a = 3 + (i - 1) * 3
    refund(KEYS[i], now, tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), -cost)
  end
  return {1}
end
local out = {1}
local states = {}
for i = 1, #KEYS do
  local a = 3 + (i - 1) * 3
  local allowed, remaining, reset, retry, state =
    decide(KEYS[i], now, tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), cost)
  if not allowed then out[1] = 0 end
  states[i] = state
  local o = i * 4 - 2
  out[o], out[o + 1], out[o + 2], out[o + 3] = allowed and 1 or 0, remaining, reset, retry
end
-- A request denied by one limit consumes nothing from the others; a peek
-- consumes nothing at all.
if out[1] == 1 and cost > 0 then
  for i = 1, #KEYS do commit(KEYS[i], states[i]) end
end
return out

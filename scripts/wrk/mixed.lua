-- scripts/loadbench.py, scenario "mixed": 90 % of requests from a token drawn
-- at random from a pool of 10,000 agents (each far below its limit, so
-- allowed) and 10 % from one flooding token (over TELEMETRY_RATE=1000/m after
-- its first 1,000 requests, so denied).
--
--   wrk -t1 -c64 -d10s --latency -s scripts/wrk/mixed.lua http://127.0.0.1:3000/api/v1/telemetry/

local POOL = 10000
local FLOOD_SHARE = 0.10
local requests = {}
local flood

function init(args)
  -- Each thread draws its own sequence.
  math.randomseed(os.time() + tonumber(tostring(requests):match("0x(%x+)") or "0", 16))
  local body = '[{"event":"process_start","host":"ws-0001","pid":4242}]'
  local function format(token)
    return wrk.format("POST", nil, {
      ["Content-Type"] = "application/json",
      ["X-Agent-Token"] = token,
    }, body)
  end
  for i = 1, POOL do
    requests[i] = format(string.format("AGENT-%05d", i))
  end
  flood = format("AGENT-FLOOD")
end

function request()
  if math.random() < FLOOD_SHARE then
    return flood
  end
  return requests[math.random(POOL)]
end

-- scripts/loadbench.py, scenario "allowed": every request from a token drawn
-- at random from a pool of 10,000 agents, under a rate so high (the bench
-- sets TELEMETRY_RATE=1000000000/m) that nothing is denied.
--
--   wrk -t1 -c64 -d10s --latency -s scripts/wrk/allowed.lua http://127.0.0.1:3000/api/v1/telemetry/

local POOL = 10000
local requests = {}

function init(args)
  -- Each thread draws its own sequence.
  math.randomseed(os.time() + tonumber(tostring(requests):match("0x(%x+)") or "0", 16))
  local body = '[{"event":"process_start","host":"ws-0001","pid":4242}]'
  for i = 1, POOL do
    requests[i] = wrk.format("POST", nil, {
      ["Content-Type"] = "application/json",
      ["X-Agent-Token"] = string.format("AGENT-%05d", i),
    }, body)
  end
end

function request()
  return requests[math.random(POOL)]
end
